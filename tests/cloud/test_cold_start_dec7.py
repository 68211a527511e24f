"""Cold start: a segment reason names only segment values with purchases behind them, and published cold-start menus
use the customer's own store (its origin, :class:`~dangol_cloud.models_ops.CustomerOrigin`) and, per day-part, the
hour.

The tiny two-store history, by hand (line counts; 11 known customers, items A-F, F never sold):

* store s1, 6 customers x 10 days: A every evening (19 h, 60), D every other evening (30), C on 5 mornings (8 h, 30);
* store s2, 5 customers x 10 days: B every lunch (12 h, 50), E every other lunch (25).

Chain-wide, all day, A sells most (60 > 50); at s2 B does (A never sells there); at s1 at breakfast C does (the only
item sold at 7-9 h there); at s1 in the evening A then D.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dangol_cloud.menu_mapping import MenuScope
from dangol_cloud.recommend import train
from dangol_cloud.training_menus import COLD_START, choose_picks, daypart_menus, refresh_menus

ITEMS = list("ABCDEF")


def _two_stores(s1: str = "s1", s2: str = "s2") -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    day0 = pd.Timestamp("2026-03-02")
    for k in range(6):
        for d in range(10):
            rows.append((f"a{k}", "A", day0 + pd.Timedelta(days=d, hours=19), 1.0, s1))
            if d % 2 == 0:
                rows.append((f"a{k}", "D", day0 + pd.Timedelta(days=d, hours=19), 1.0, s1))
            if d < 5:
                rows.append((f"a{k}", "C", day0 + pd.Timedelta(days=d, hours=8), 1.0, s1))
    for k in range(5):
        for d in range(10):
            rows.append((f"b{k}", "B", day0 + pd.Timedelta(days=d, hours=12), 1.0, s2))
            if d % 2 == 0:
                rows.append((f"b{k}", "E", day0 + pd.Timedelta(days=d, hours=12), 1.0, s2))
    inter = pd.DataFrame(rows, columns=["customer", "item", "ts", "quantity", "store"])
    items = pd.DataFrame({"item": ITEMS, "category": [f"cat{c}" for c in ITEMS], "price": 3.0,
                          "tags": [[] for _ in ITEMS], "available": True})
    return inter, items


@pytest.fixture(scope="module")
def model():
    inter, items = _two_stores()
    segments = pd.DataFrame({"customer": [f"a{k}" for k in range(6)] + [f"b{k}" for k in range(5)],
                             "age_group": ["30-39"] * 6 + ["40-49"] * 5, "area": [None] * 11})
    return train(inter, items, segments=segments)


SCOPE = MenuScope(usable=frozenset(), mapping={}, available=frozenset(ITEMS))  # nothing on the menu yet: all items


def _items(picks) -> list[str]:
    return [p.item for p in picks]


# --- finding 2: the segment reason -----------------------------------------------------------------------------

def test_segment_reason_names_only_the_values_with_purchases(model) -> None:
    out = model.recommend(["new"], n=3, segments={"new": ["age_group:30-39", "area:Busan"]})["new"]
    assert out[0].reasons == ["popular with customers like you (30-39)"]  # before: "(30-39, Busan)"; no Busan data
    # the shares blend the known value only: the same list as with that value alone
    alone = model.recommend(["new"], n=3, segments={"new": ["age_group:30-39"]})["new"]
    assert [(p.item, p.score) for p in out] == [(p.item, p.score) for p in alone]


def test_segment_reason_without_known_values_is_the_popularity_one(model) -> None:
    out = model.recommend(["new"], n=3, segments={"new": ["area:Busan"]})["new"]
    assert _items(out) == _items(model.cold_start(3)) == ["A", "B", "C"]
    assert all(p.reasons == ["popular with our customers"] for p in out)
    at_s2 = model.recommend(["new"], n=3, store="s2", segments={"new": ["area:Busan"]})["new"]
    assert _items(at_s2) == ["B", "E", "A"] and at_s2[0].reasons == ["popular at this store"]


# --- finding 3: store and hour in published cold-start menus ------------------------------------------------------

def test_choose_picks_ranks_each_cold_customer_by_its_own_store(model) -> None:
    stores = {"n1": "s1", "n2": "s2", "a0": "s2", "n4": "gone"}  # a0 is known: its store changes nothing
    got = choose_picks(model, ["n1", "n2", "n3", "a0", "n4"], 3, SCOPE, {}, stores=stores)
    assert list(got) == ["n1", "n2", "n3", "a0", "n4"]
    assert _items(got["n1"]) == ["A", "C", "D"]  # s1's best sellers (C and D tie, 30 lines each)
    assert _items(got["n2"]) == ["B", "E", "A"]  # before the fix: ["A", "B", "C"], the chain's
    assert _items(got["n3"]) == ["A", "B", "C"]  # no origin store: chain-wide
    assert _items(got["n4"]) == ["A", "B", "C"]  # a store without sales: chain-wide
    assert got["n2"][0].reasons == ["popular at this store"]
    assert _items(got["a0"]) == _items(choose_picks(model, ["a0"], 3, SCOPE, {})["a0"])


def test_daypart_menus_give_cold_customers_their_store_and_hour(model) -> None:
    rows = {r["customer_id"]: r["dayparts"]
            for r in daypart_menus(model, ["n1", "n2", "a0"], 3, SCOPE, {}, stores={"n1": "s1", "n2": "s2"})}
    assert set(rows) == {"n1", "n2", "a0"}  # before the fix: only the known customer a0
    n1, n2 = rows["n1"], rows["n2"]
    assert [p["item_id"] for p in n1["breakfast"]] == ["C", "A", "D"]  # s1 at 7-9 h: C
    assert [p["item_id"] for p in n1["evening"]] == ["A", "D", "C"]  # s1 at 18-20 h: A, then D
    assert [p["item_id"] for p in n2["lunch"]] == ["B", "E", "A"]
    assert n1["breakfast"][0]["reasons"] == ["popular at this time of day at this store"]
    assert all(p.get(COLD_START) for part in (*n1.values(), *n2.values()) for p in part)
    assert not any(p.get(COLD_START) for part in rows["a0"].values() for p in part)


def test_refresh_menus_writes_cold_start_menus_of_the_origin_store(db, settings, tmp_path: Path) -> None:
    from sqlalchemy import select

    from dangol_cloud.models import CatalogueItem, Customer, Menu, ModelVersion, Store
    from dangol_cloud.models_ops import CustomerOrigin, MenuDayparts
    from dangol_cloud.training_menus import origin_stores

    with db.transaction() as s:
        one, two, empty = Store(name="One"), Store(name="Two"), Store(name="Empty")
        s.add_all([one, two, empty, *(CatalogueItem(id=i, ref=i, name=i, tags=[]) for i in ITEMS)])
        s.flush()
        ids = {"n1": one.id, "n2": two.id, "n4": empty.id}
    inter, items = _two_stores(ids["n1"], ids["n2"])
    trained = train(inter, items)
    folder = trained.save(tmp_path / "models")
    customers = {name: f"00000000-0000-4000-8000-00000000000{k}" for k, name in enumerate(["n1", "n2", "n3", "n4"])}
    with db.transaction() as s:
        s.add(ModelVersion(version=trained.version, path=str(folder)))
        for name, cid in customers.items():
            s.add(Customer(id=cid, status="active"))
        s.flush()
        s.add_all([CustomerOrigin(customer_id=customers[n], store_id=ids[n]) for n in ("n1", "n2", "n4")])
    with db.sessions() as s:
        assert origin_stores(s, list(customers.values())) == {customers[n]: ids[n] for n in ("n1", "n2", "n4")}

    settings.menu_size = 3
    assert refresh_menus(db, settings, list(customers.values())) == 4
    with db.sessions() as s:
        menus = {m.customer_id: [p["item_id"] for p in m.picks] for m in s.scalars(select(Menu))}
        slots = {r.customer_id: r.dayparts for r in s.scalars(select(MenuDayparts))}
    assert menus == {customers["n1"]: ["A", "C", "D"], customers["n2"]: ["B", "E", "A"],
                     customers["n3"]: ["A", "B", "C"], customers["n4"]: ["A", "B", "C"]}
    assert set(slots) == set(customers.values())
    assert [p["item_id"] for p in slots[customers["n1"]]["breakfast"]] == ["C", "A", "D"]
    assert [p["item_id"] for p in slots[customers["n2"]]["lunch"]] == ["B", "E", "A"]
    assert all(p[COLD_START] for parts in slots.values() for part in parts.values() for p in part)


def test_segment_table_knows_only_values_with_purchase_lines() -> None:
    import numpy as np

    from dangol_cloud.recommend.segments import SegmentTable

    # customer a ("age:x") bought item 0 twice; customer b ("area:y") has no line
    table = SegmentTable.build(np.array([0, 0]), np.array([0, 0]), np.array(["a", "b"]),
                               {"a": ["age:x"], "b": ["area:y"]}, 2)
    assert table.known(["area:y", "age:x", "age:x", "other:z"]) == ["age:x"]
    assert table.shares(["area:y"], np.array([0.5, 0.5]), 1.0) is None
    # (2 + 1 * 0.5, 0 + 1 * 0.5) / (2 + 1): "area:y" is not blended in
    assert table.shares(["age:x", "area:y"], np.array([0.5, 0.5]), 1.0) == pytest.approx([5 / 6, 1 / 6])
