"""How :func:`dangol_cloud.training_menus.choose_picks` fills a menu of ``n`` menu items (defects 2 and 3).

* Items nobody has bought yet get the model's new-item slots (``RecommenderConfig.new_item_slots`` places at the
  end of the model's own ``n``-list), and further ones only places that would otherwise stay empty: a longer list
  asked for because several products are sold as one menu item must not let its trailing run of never-bought
  items push out the best sellers.
* A customer is done once they have every usable menu item still reachable for them (a menu smaller than ``n``
  needs no wider ask); wider asks leave out the menu items already picked and compute no reasons, and the kept
  picks get the same reasons as without widening.

Contract tests with a stand-in model (:class:`ListModel`, lists checkable by hand) and with the real recommender
trained on small hand-made frames (the reviewer's reproductions, scaled down; invented, not real purchases).
The end-to-end test on real Ta-Feng purchases is in ``test_mapping_availability.py``.
"""

from __future__ import annotations

import random
from datetime import datetime

import numpy as np
import pandas as pd

from dangol_cloud.menu_mapping import MenuScope
from dangol_cloud.recommend import Pick, RecommenderConfig, train
from dangol_cloud.training_menus import choose_picks

# --- a stand-in recommender ------------------------------------------------------------------------------------


class ListModel:
    """A recommender with a fixed order per customer, placing the new-item slot like the real one
    (:meth:`~dangol_cloud.recommend.lists.ListsMixin._with_new_items`): the list of ``n`` is the first ``n - slots``
    of the customer's ``order`` without the ``good`` new items, then the best ``good`` one, then the rest of the
    first ``n`` of ``order``. Customers not in ``order`` get ``cold`` (no slot). Records every call as
    ``(customers, n, explain, picks returned)``; a pick's reasons are ``["why <item>"]`` when explained."""

    def __init__(self, order: dict[str, list[str]], new: set[str], good: list[str], cold: list[str] | None = None,
                 slots: int = 1):
        every = {i for o in [*order.values(), cold or []] for i in o} | new
        self.items = np.array(sorted(every))
        self.customers = np.array(sorted(order))
        self.config = RecommenderConfig(new_item_slots=slots)
        self.order, self.new, self.good, self.cold = order, new, good, cold or []
        self.calls: list[tuple[tuple[str, ...], int, bool, int]] = []

    def new_items(self) -> np.ndarray:
        return np.array([i in self.new for i in self.items])

    def recommend(self, customers, n=10, *, available=None, hour=None, store=None, explain=True, exclude=None,
                  segments=None) -> dict[str, list[Pick]]:
        out = {}
        for c in customers:
            without = (exclude or {}).get(c, ())
            ok = lambda i, without=without: (available is None or i in available) and i not in without  # noqa: E731
            known = c in self.order
            ranked = [i for i in (self.order[c] if known else self.cold) if ok(i)][:n]
            good = [i for i in self.good if ok(i)] if known else []
            slots = min(self.config.new_item_slots, n)
            if good and slots:
                head = [i for i in ranked if i not in good][:n - slots]
                added = good[:slots]
                rest = [i for i in ranked if i not in head and i not in added]
                ranked = (head + added + rest)[:n] if len(head) + len(added) < n else head + added
            out[c] = [Pick(i, float(-k), [f"why {i}"] if explain else []) for k, i in enumerate(ranked)]
        self.calls.append((tuple(customers), n, explain, sum(len(p) for p in out.values())))
        return out

    def explained(self) -> int:
        """Picks returned with reasons, over all calls."""
        return sum(picks for _, _, explain, picks in self.calls if explain)


def shown(picks, scope: MenuScope) -> list[str]:
    return [scope.shown_as(p.item) for p in picks]


# 5 menu items with sales, 2 POS products each; 10 menu items nobody has bought (N1..N10)
SOLD = [f"M{k}" for k in range(1, 6)]
PRODUCTS = [f"P{k}{s}" for k in range(1, 6) for s in "ab"]  # P1a, P1b, P2a, ...
NEW = [f"N{k}" for k in range(1, 11)]
SOLD_SCOPE = MenuScope(usable=frozenset(SOLD + NEW), mapping={p: f"M{p[1]}" for p in PRODUCTS},
                       available=frozenset(SOLD + NEW + PRODUCTS))


def test_best_sellers_first_then_the_model_s_slot_then_new_items_only_in_empty_places() -> None:
    # the model scores the new items N10 > N9 > ... > N1, but its slot goes to N1 (best metadata match)
    model = ListModel({"c": PRODUCTS + SOLD + NEW[::-1]}, new=set(NEW), good=NEW)
    got = choose_picks(model, ["c"], 10, SOLD_SCOPE, {})["c"]
    # the 10-list has M1..M5 (9 products) and the slot N1; the wider ask, without those, gives the slot to the next
    # best match N2, then N10, N9, ... by score. Before the fix: the 25-long list's trailing run N1, N10, ..., N2
    # took all 10 places, no best seller
    assert shown(got, SOLD_SCOPE) == ["M1", "M2", "M3", "M4", "M5", "N1", "N2", "N10", "N9", "N8"]
    assert [p.item for p in got[:5]] == ["P1a", "P2a", "P3a", "P4a", "P5a"]  # each menu item's best product
    got = choose_picks(model, ["c"], 4, SOLD_SCOPE, {})["c"]  # a 4-item menu: 3 best sellers and the slot
    assert shown(got, SOLD_SCOPE) == ["M1", "M2", "M3", "N1"]


def test_a_list_without_a_slot_gets_no_never_bought_item_while_best_sellers_are_left() -> None:
    model = ListModel({}, new=set(NEW), good=[], cold=PRODUCTS + SOLD + NEW)  # cold start: no new-item slot
    got = choose_picks(model, ["stranger"], 4, SOLD_SCOPE, {})["stranger"]
    assert shown(got, SOLD_SCOPE) == ["M1", "M2", "M3", "M4"]  # before: M1, M2, M3, N1
    got = choose_picks(model, ["stranger"], 8, SOLD_SCOPE, {})["stranger"]
    assert shown(got, SOLD_SCOPE) == ["M1", "M2", "M3", "M4", "M5", "N1", "N2", "N3"]  # places otherwise empty


# 3 menu items, 20 POS products each (A1..A20 sold as A, ...): a menu smaller than the menu size of 10
SMALL = {f"{m}{k}": m for m in "ABC" for k in range(1, 21)}
SMALL_SCOPE = MenuScope(usable=frozenset("ABC"), mapping=SMALL, available=frozenset([*SMALL, "A", "B", "C"]))


def test_a_menu_smaller_than_the_menu_size_needs_no_wider_ask() -> None:
    order = ["A1", "B1", "C1", *[p for p in SMALL if p[1:] != "1"], "A", "B", "C"]
    model = ListModel({"c": order}, new=set(), good=[])
    got = choose_picks(model, ["c"], 10, SMALL_SCOPE, {})["c"]
    assert shown(got, SMALL_SCOPE) == ["A", "B", "C"]
    assert [n for _, n, _, _ in model.calls] == [10]  # before: 10, 40, 63 (every candidate), all explained
    model.calls.clear()
    # B disliked (B and its products excluded): done once A and C are there
    exclude = {"c": {"B", *[p for p in SMALL if p[0] == "B"]}}
    got = choose_picks(model, ["c"], 10, SMALL_SCOPE, exclude)["c"]
    assert shown(got, SMALL_SCOPE) == ["A", "C"]
    assert [n for _, n, _, _ in model.calls] == [10]


def test_wider_asks_compute_no_reasons_and_the_kept_picks_get_theirs() -> None:
    # A's 20 products rank first, then B's, then C's: B needs an ask of 40, C one of 63
    order = [*SMALL, "A", "B", "C"]
    customers = [f"c{k}" for k in range(5)]
    model = ListModel({c: order for c in customers}, new=set(), good=[])
    got = choose_picks(model, customers, 10, SMALL_SCOPE, {})
    for c in customers:
        assert [p.item for p in got[c]] == ["A1", "B1", "C1"]
        assert [p.reasons for p in got[c]] == [["why A1"], ["why B1"], ["why C1"]]  # as an explained ask gives
    assert all(not explain for _, n, explain, _ in model.calls if n > 10)  # the wider asks
    assert model.explained() <= 2 * 10 * len(customers)  # before: 10 + 40 + 63 explained picks per customer


# --- the real recommender on small hand-made frames (the reviewer's reproductions, scaled down) --------------


def _catalogue(ids: list[str], categories: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item": ids, "category": categories, "price": [3.0] * len(ids), "tags": [[]] * len(ids),
                         "available": [True] * len(ids)})


def test_real_model_new_menu_items_do_not_push_out_the_best_sellers() -> None:
    rng = random.Random(0)
    bought = [f"M{k}" for k in range(5)]  # 5 menu items with sales, 3 POS products each
    new = [f"N{k}" for k in range(10)]  # 10 menu items the owner just added
    mapping = {f"{m}_{s}": m for m in bought for s in "abc"}
    products = list(mapping)
    rows = [{"customer": f"c{c}", "item": rng.choice(products), "ts": datetime(2024, 1, d, 8 + c % 8), "quantity": 1.0}
            for c in range(60) for d in range(1, 25) if rng.random() < 0.5]
    every = products + bought + new
    model = train(pd.DataFrame(rows), _catalogue(every, ["coffee"] * len(every)), menu_item_of=mapping)
    scope = MenuScope(usable=frozenset(bought + new), mapping=mapping, available=frozenset(every))
    picks = choose_picks(model, ["c0", "c1", "stranger"], 10, scope, {})
    for customer, chosen in picks.items():
        menu = [scope.shown_as(p.item) for p in chosen]
        # before the fix: c0 and the stranger got the 10 new items and none of the 5 best sellers
        assert len(menu) == 10 and set(menu[:5]) == set(bought) and set(menu[5:]) <= set(new), (customer, menu)


def test_real_model_a_small_menu_costs_little_and_keeps_the_reasons() -> None:
    rng = random.Random(0)
    menu = [f"M{k}" for k in range(8)]  # 8 menu items, fewer than the menu size of 10
    mapping = {f"P{k}": menu[k % 8] for k in range(400)}  # 400 POS products mapped to them
    products = list(mapping)
    rows = [{"customer": f"c{c}", "item": rng.choice(products), "ts": datetime(2024, 1, 1 + d % 28, 9),
             "quantity": 1.0} for c in range(300) for d in range(rng.randint(2, 12))]
    every = products + menu
    model = train(pd.DataFrame(rows), _catalogue(every, [f"cat{k % 8}" for k in range(len(every))]),
                  menu_item_of=mapping)
    scope = MenuScope(usable=frozenset(menu), mapping=mapping, available=frozenset(every))
    customers = [f"c{c}" for c in range(300)]
    calls: list[tuple[int, bool]] = []  # (picks returned, explained)
    real = model.recommend

    def spy(who, n=10, **kw):
        got = real(who, n, **kw)
        calls.append((sum(len(p) for p in got.values()), kw.get("explain", True)))
        return got

    model.recommend = spy
    picks = choose_picks(model, customers, 10, scope, {})
    model.recommend = real
    assert {len({scope.shown_as(p.item) for p in ps}) for ps in picks.values()} == {8}  # every item, once
    assert all(len(ps) == 8 for ps in picks.values())
    explained = sum(k for k, explain in calls if explain)
    assert explained <= 2 * 10 * len(customers), calls  # before: every candidate explained for every customer
    # the kept picks' reasons and scores are those of one explained ask of the whole list (no widening)
    full = real(customers[:20], n=len(scope.candidates()), available=scope.candidates())
    for c in customers[:20]:
        by_item = {p.item: p for p in full[c]}
        assert [(p.reasons, round(p.score, 9)) for p in picks[c]] == \
            [(by_item[p.item].reasons, round(by_item[p.item].score, 9)) for p in picks[c]]
