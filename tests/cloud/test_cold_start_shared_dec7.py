"""Cold-start customers with the same store, hour, segment values and dislikes share one computed list
(:mod:`dangol_cloud.cold_start_menus`), and what is published is exactly what each of them gets when asked alone.

Review finding (Dec 7): the menus step of a training went from 10.2 s to 48.3 s with 20,000 enrolled customers
without purchases, ~2 ms each, because each one's cold-start list was computed one by one.

The tiny two-store history, by hand (line counts; 11 known customers, items A-F, F never sold):

* store s1, customers a0-a5 (age group 30-39) x 10 days: A every evening (19 h, 60), D every other evening (30),
  C on 5 mornings (8 h, 30);
* store s2, customers b0-b4 (age group 40-49) x 10 days: B every lunch (12 h, 50), E every other lunch (25).

At s1 all day a cold-start list is A, then C and D (tied), then B and E (the chain's, through smoothing); at s2 B,
E, A. On the WIDE menu, A, C and D are all sold as one menu item X: a cold-start customer at s1 first gets
A, C, D (one menu item), is asked again without them and gets B and E: the widening and the reason asks
(:func:`dangol_cloud.training_menus._with_reasons`) run for cold-start customers too.
"""

from __future__ import annotations

import pandas as pd
import pytest

from dangol_cloud.menu_mapping import MenuScope
from dangol_cloud.recommend import train
from dangol_cloud.recommend.dayparts import DAYPART_HOURS
from dangol_cloud.training_menus import REASON_CHUNK, choose_picks, daypart_menus, pick_rows

ITEMS = list("ABCDEF")
N = 3

#: Nothing on the menu yet: the model's lists as they are.
EMPTY = MenuScope(usable=frozenset(), mapping={}, available=frozenset(ITEMS))
#: Every product is its own menu item (F unsold).
PLAIN = MenuScope(usable=frozenset(ITEMS), mapping={i: i for i in ITEMS}, available=frozenset(ITEMS))
#: A, C and D are sold as the menu item X: cold-start customers at s1 need a wider ask.
WIDE = MenuScope(usable=frozenset({"X", "B", "E"}), mapping={"A": "X", "C": "X", "D": "X", "B": "B", "E": "E"},
                 available=frozenset({*ITEMS, "X"}))

KNOWN = [f"a{k}" for k in range(6)] + [f"b{k}" for k in range(5)]
# cold-start customers: (id, origin store or None, segment values, disliked ids)
COLD = [
    ("n1", "s1", None, None), ("n2", "s1", None, None),                      # twins
    ("n3", "s1", ["age_group:40-49"], None), ("n4", "s1", ["age_group:40-49"], {"B"}),
    ("n5", "s1", None, {"A"}), ("n6", "s1", None, {"A"}),                    # twins with the same dislike
    ("n7", "s1", None, {"A", "C", "D"}),                                     # X disliked (its products): own list
    ("n8", "s2", None, None), ("n9", "s2", ["age_group:30-39"], None), ("n10", "s2", ["age_group:30-39"], None),
    ("z1", None, None, None), ("z2", None, ["age_group:40-49"], {"E"}),     # no origin store: with the known ones
    ("n11", "gone", None, set()),                                            # a store without sales; empty dislikes
]
# many twins (more than one reason chunk), interleaved with the known customers (no origin store)
CROWD = [(f"m{k}", "s1", None, None) for k in range(REASON_CHUNK + 30)] + \
        [(f"y{k}", None, None, None) for k in range(REASON_CHUNK + 30)]


def _history() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = []
    day0 = pd.Timestamp("2026-03-02")
    for k in range(6):
        for d in range(10):
            rows.append((f"a{k}", "A", day0 + pd.Timedelta(days=d, hours=19), 1.0, "s1"))
            if d % 2 == 0:
                rows.append((f"a{k}", "D", day0 + pd.Timedelta(days=d, hours=19), 1.0, "s1"))
            if d < 5:
                rows.append((f"a{k}", "C", day0 + pd.Timedelta(days=d, hours=8), 1.0, "s1"))
    for k in range(5):
        for d in range(10):
            rows.append((f"b{k}", "B", day0 + pd.Timedelta(days=d, hours=12), 1.0, "s2"))
            if d % 2 == 0:
                rows.append((f"b{k}", "E", day0 + pd.Timedelta(days=d, hours=12), 1.0, "s2"))
    inter = pd.DataFrame(rows, columns=["customer", "item", "ts", "quantity", "store"])
    items = pd.DataFrame({"item": ITEMS, "category": [f"cat{c}" for c in ITEMS], "price": 3.0,
                          "tags": [[] for _ in ITEMS], "available": True})
    segments = pd.DataFrame({"customer": KNOWN, "age_group": ["30-39"] * 6 + ["40-49"] * 5, "area": [None] * 11})
    return inter, items, segments


@pytest.fixture(scope="module")
def model():
    inter, items, segments = _history()
    trained = train(inter, items, segments=segments)
    assert trained.dayparts is not None  # the history has times of day: day-part slots are made
    return trained


class Counting:
    """The model, recording the cold-start customers of every :meth:`recommend` call."""

    def __init__(self, model):
        self._model = model
        self.cold_asked: list[str] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def recommend(self, customers, *args, **kwargs):
        known = {str(c) for c in self._model.customers}
        self.cold_asked += [c for c in customers if c not in known]
        return self._model.recommend(customers, *args, **kwargs)


def _inputs(cold) -> tuple[list[str], dict, dict, dict]:
    customers, stores, segments, exclude = [], {}, {}, {}
    known = iter(KNOWN)
    for k, (cid, store, values, disliked) in enumerate(cold):
        customers.append(cid)
        if k % 3 == 0 and (other := next(known, None)) is not None:  # known customers between cold-start ones
            customers.append(other)
        if store is not None:
            stores[cid] = store
        if values is not None:
            segments[cid] = values
        if disliked is not None:
            exclude[cid] = disliked
    customers += [c for c in KNOWN if c not in customers]
    exclude["a1"] = {"A"}  # a known customer's dislike changes nothing for the others
    return customers, stores, segments, exclude


def _alone(model, customer, scope, exclude, segments, stores, hour):
    """The per-customer computation: the customer asked alone."""
    return choose_picks(model, [customer], N, scope, exclude, hour=hour, segments=segments, stores=stores)[customer]


def _rows(picks, cold: bool) -> list[dict]:
    return pick_rows(picks, cold_start=cold)


@pytest.mark.parametrize("scope", [EMPTY, PLAIN, WIDE], ids=["empty-menu", "plain-menu", "wide-menu"])
def test_published_cold_start_picks_equal_the_per_customer_ones(model, scope) -> None:
    customers, stores, segments, exclude = _inputs(COLD)
    cold = [c for c, *_ in COLD]
    known = [c for c in customers if c in KNOWN]
    for hour in (None, *DAYPART_HOURS.values()):
        got = choose_picks(model, customers, N, scope, exclude, hour=hour, segments=segments, stores=stores)
        assert list(got) == customers
        for c in cold:
            alone = _alone(model, c, scope, exclude, segments, stores, hour)
            assert _rows(got[c], True) == _rows(alone, True), (c, hour)
            if scope is not WIDE:  # one ask: exactly the model's own cold-start list of that store and hour
                direct = model.recommend([c], n=N, available=scope.candidates(), hour=hour, store=stores.get(c),
                                         exclude=exclude, segments=segments, explain=True)[c]
                assert _rows(got[c], True) == _rows(direct, True), (c, hour)
        only_known = choose_picks(model, known, N, scope, exclude, hour=hour, segments=segments, stores=stores)
        assert {c: _rows(got[c], False) for c in known} == {c: _rows(p, False) for c, p in only_known.items()}
    rows = {r["customer_id"]: r["dayparts"] for r in daypart_menus(model, customers, N, scope, exclude,
                                                                   segments=segments, stores=stores)}
    assert list(rows) == customers
    for c in cold:
        assert rows[c] == {name: _rows(_alone(model, c, scope, exclude, segments, stores, hour), True)
                           for name, hour in DAYPART_HOURS.items()}, c


def test_the_hand_checked_lists(model) -> None:
    customers, stores, segments, exclude = _inputs(COLD)
    got = choose_picks(model, customers, N, PLAIN, exclude, segments=segments, stores=stores)
    items = {c: [p.item for p in got[c]] for c in got}
    assert items["n1"] == items["n2"] == ["A", "C", "D"]  # s1's best sellers (C and D tie)
    assert items["n5"] == items["n6"] == ["C", "D", "B"]  # without A
    assert items["n8"] == ["B", "E", "A"]  # s2
    assert items["z1"] == items["n11"] == ["A", "B", "C"]  # the chain's
    assert got["n8"][0].reasons == ["popular at this store"]
    assert got["n3"][0].reasons == got["n4"][0].reasons == ["popular with customers like you (40-49)"]
    assert "B" not in items["n4"]
    wide = choose_picks(model, customers, N, WIDE, exclude, segments=segments, stores=stores)
    assert [WIDE.shown_as(p.item) for p in wide["n1"]] == ["X", "B", "E"]  # widened past A, C, D
    assert [p.item for p in wide["n1"]] == [p.item for p in wide["n2"]] == ["A", "B", "E"]
    assert [WIDE.shown_as(p.item) for p in wide["n7"]] == ["B", "E"]  # X disliked: two menu items left


@pytest.mark.parametrize("scope", [EMPTY, WIDE], ids=["empty-menu", "wide-menu"])
def test_each_distinct_cold_start_list_is_computed_once(model, scope) -> None:
    customers, stores, segments, exclude = _inputs(COLD + CROWD)
    counting = Counting(model)
    got = choose_picks(counting, customers, N, scope, exclude, segments=segments, stores=stores)
    plain = choose_picks(model, customers, N, scope, exclude, segments=segments, stores=stores)
    assert {c: _rows(p, c not in KNOWN) for c, p in got.items()} == \
        {c: _rows(p, c not in KNOWN) for c, p in plain.items()}
    # one per (store, segment values, dislikes): n1 (the crowd m* are its twins), n3, n4, n5 (n6), n7, n8, n9
    # (n10), z1 (the crowd y*), z2, n11
    first_ask = list(dict.fromkeys(counting.cold_asked))
    assert sorted(first_ask) == sorted(["n1", "n3", "n4", "n5", "n7", "n8", "n9", "z1", "z2", "n11"])
    assert len(counting.cold_asked) < 4 * len(first_ask)  # first ask, widening, reasons: never per twin
    for c in [f"m{k}" for k in range(REASON_CHUNK + 30)]:
        assert _rows(got[c], True) == _rows(got["n1"], True)
    for c in [f"y{k}" for k in range(REASON_CHUNK + 30)]:
        assert _rows(got[c], True) == _rows(got["z1"], True)


def test_twins_get_lists_of_their_own(model) -> None:
    """Twins share the (read-only) Pick objects, not the lists: a caller trimming one menu trims no other."""
    customers, stores, segments, exclude = _inputs(COLD)
    got = choose_picks(model, customers, N, PLAIN, exclude, segments=segments, stores=stores)
    assert got["n1"] is not got["n2"] and got["n5"] is not got["n6"]
    got["n2"].pop()
    got["n6"].clear()
    assert _rows(got["n1"], True) == _rows(_alone(model, "n1", PLAIN, exclude, segments, stores, None), True)
    assert _rows(got["n5"], True) == _rows(_alone(model, "n5", PLAIN, exclude, segments, stores, None), True)
