"""A purchase line whose hour of day is unknown counts in the history but not in the day-part profile nor the hourly
cold-start popularity (review r2, 7 Dec; :data:`dangol_cloud.recommend.data.NO_HOUR`):

* a POS API sale (an aware time, stored as UTC) of a store without a zone of its own while ``TIMEZONE`` is unset:
  the door reads its own clock, the cloud knows no zone to read the sale's hour in (it was learnt at its UTC hour:
  08:10 in Seoul became 23:10, an evening);
* a date-only imported line (Ta-Feng-style, exactly 00:00:00 local): it was counted as an evening basket as soon as
  any other line had a time of day.

Tiny hand-made histories (counts checkable by hand), real databases (SQLite and PostgreSQL), real training.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd

from dangol_cloud.app import create_app
from dangol_cloud.importers import PurchaseRow
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, StoreSetting
from dangol_cloud.recommend import Recommender, train
from dangol_cloud.recommend.data import NO_HOUR, clean_interactions
from dangol_cloud.recommend.dayparts import DAYPARTS, DayPartProfile, daypart_of
from dangol_cloud.recommend.history import PopularityTable
from dangol_cloud.training import load_frames, train_from_database

from .conftest import STORE_TOKEN, add_store_and_device

BREAKFAST, EVENING = 0, 3


def _pos_sales(db, settings) -> None:
    """Two regulars of a Seoul café, each on three mornings a latte at 08:10 and at lunch a cake at 12:30 (+09:00),
    sent through the POS API."""
    with db.transaction() as s:
        s.add_all([CatalogueItem(ref="latte", name="Latte", price=4500, tags=[]),
                   CatalogueItem(ref="cake", name="Cake", price=6500, tags=[])])
    client = create_app(settings, db=db, TESTING=True).test_client()
    n = 0
    for customer in ("loyalty-1", "loyalty-2"):
        for day in (1, 2, 3):
            for item, at in (("latte", "08:10"), ("cake", "12:30")):
                n += 1
                sale = {"customer": customer, "ts": f"2026-12-0{day}T{at}:00+09:00", "lines": [{"item": item}]}
                r = client.post("/api/v1/purchases", data=json.dumps(sale), headers={
                    "Content-Type": "application/json", "Idempotency-Key": f"k{n}",
                    "Authorization": f"Bearer {STORE_TOKEN}"})
                assert r.status_code == 201, r.json


def test_pos_sales_of_a_store_without_a_clock_have_no_hour(db, settings):
    store_id, _device = add_store_and_device(db)
    _pos_sales(db, settings)
    assert settings.door_timezone is None  # TIMEZONE unset: each door reads its own (Seoul) clock
    model = Recommender.load(train_from_database(db, settings).path)
    # the 12 lines count in the history (frequencies, recency) ...
    assert float(model.history.item_lines.sum()) == 12
    assert float(model.history.visits.sum()) > 0  # (visit days: UTC days, no zone known; 4 each here)
    # ... but no hour is known for any: no day-part profile (was: 08:10 and 12:30 learnt as 23:10 and 03:30,
    # evening) and no hourly cold-start popularity
    assert model.dayparts is None
    assert not model.popularity.has_hours
    latte = model._item_index[_catalogue_id(db, "latte")]
    assert model.popularity.shares(store_id)[0][latte] > 0  # the store's popularity still counts them

    with db.transaction() as s:  # the store gets its zone (Stores page): its sales' hours are known
        s.add(StoreSetting(store_id=store_id, timezone="Asia/Seoul"))
    model = Recommender.load(train_from_database(db, settings).path)
    assert model.dayparts is not None and model.popularity.has_hours
    latte, cake = model._item_index[_catalogue_id(db, "latte")], model._item_index[_catalogue_id(db, "cake")]
    assert model.dayparts.item_counts[latte].astype(int).tolist() == [6, 0, 0, 0]  # breakfast, at the door's clock
    assert model.dayparts.item_counts[cake].astype(int).tolist() == [0, 6, 0, 0]   # lunch


def _catalogue_id(db, ref: str) -> str:
    from sqlalchemy import select

    with db.sessions() as s:
        return s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == ref))


def test_which_lines_have_an_hour_in_the_database(db, settings, caplog):
    """TIMEZONE unset, a store without a zone: an imported naive time is its wall clock (known hour), a date-only
    one and a POS sale's aware time are not; with TIMEZONE set every aware time has its hour in it."""
    store_id, _device = add_store_and_device(db)
    _pos_sales(db, settings)
    with db.sessions() as s:
        seoul, _items = load_frames(s, "Asia/Seoul", timezone_set=True)
    assert sorted(clean_interactions(seoul)["hour"].tolist()) == [8] * 6 + [12] * 6  # TIMEZONE set: its hours
    with db.transaction() as s:
        rows = [PurchaseRow(2, "file-1", "latte", None, 1.0, None, datetime(2026, 12, 4, 8, 10), None, None),
                PurchaseRow(3, "file-1", "cake", None, 1.0, None, datetime(2026, 12, 5), None, None)]
        import_rows(s, rows, source="csv", key_prefix="csv", store_id=store_id)
    with db.sessions() as s:
        unset, _items = load_frames(s, "UTC", timezone_set=False)
    hours = clean_interactions(unset)["hour"].tolist()
    assert sorted(hours) == [NO_HOUR] * 13 + [8]  # 12 POS sales and the date-only line; the file's 08:10
    assert "12 purchase line(s) have no known hour of day" in caplog.text  # the owner is told why (POS sales)


def _dateonly_history() -> pd.DataFrame:
    """Customer c: item A at 08:00 on Jan 1-3 (breakfast), item B with dates only (00:00) on Jan 4-6; customer d:
    A at 12:00 on Jan 1-2, B at 19:00 on Jan 3."""
    day = pd.Timestamp("2026-01-01")
    rows = [("c", "A", day + pd.Timedelta(days=k, hours=8)) for k in range(3)]
    rows += [("c", "B", day + pd.Timedelta(days=3 + k)) for k in range(3)]
    rows += [("d", "A", day + pd.Timedelta(days=k, hours=12)) for k in range(2)]
    rows += [("d", "B", day + pd.Timedelta(days=2, hours=19))]
    return pd.DataFrame(rows, columns=["customer", "item", "ts"]).assign(quantity=1.0, store="s1")


def test_date_only_lines_are_no_evening_baskets():
    inter = _dateonly_history()
    cleaned = clean_interactions(inter)
    assert cleaned["hour"].tolist() == [8, 8, 8, NO_HOUR, NO_HOUR, NO_HOUR, 12, 12, 19]
    model = train(inter)
    c, d = model._customer_index["c"], model._customer_index["d"]
    a, b = model._item_index["A"], model._item_index["B"]
    # day-parts: only the timed baskets (was: c's three date-only B baskets at "evening")
    assert model.dayparts.visits[c].tolist() == [3, 0, 0, 0]
    assert model.dayparts.visits[d].tolist() == [0, 2, 0, 1]
    assert model.dayparts.item_counts[b].tolist() == [0, 0, 0, 1]
    assert model.dayparts.own_counts(np.array([c]), np.array([b]), EVENING).tolist() == [0]
    # history: every line (c bought B on 3 visits, 6 visits in all)
    assert model.history.menu_item_visits(np.array([c]), np.array([b])).tolist() == [3]
    assert model.history.visits[c] == 6 and float(model.history.item_lines[b]) == 4
    # cold start: the overall shares count all 9 lines (Laplace: (n + 1) / (9 + 2)); the window around midnight
    # (23-01 h) holds none, so the hourly share is the overall one (was: B's three date-only lines at 00 h)
    overall, _reason = model.popularity.shares(None, None)
    assert np.allclose(overall[[a, b]], [6 / 11, 5 / 11])
    at_midnight, _reason = model.popularity.shares(None, 0)
    assert np.allclose(at_midnight[[a, b]], [6 / 11, 5 / 11])
    evening = [p for p in model.recommend(["c"], n=2, hour=19)["c"] if p.item == "B"]
    assert evening and not any("evening" in r for r in evening[0].reasons)


def test_a_day_part_profile_leaves_lines_without_an_hour_out():
    u, i = np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1])
    day, hour = np.array([1, 2, 3, 1]), np.array([8, NO_HOUR, NO_HOUR, 12])
    profile = DayPartProfile.build(u, i, day, hour, (2, 2))
    assert profile.visits.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    assert profile.item_counts.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    # one known hour only: no time-of-day information, as for data with dates only
    assert DayPartProfile.build(u, i, day, np.array([8, NO_HOUR, NO_HOUR, 8]), (2, 2)) is None
    assert DayPartProfile.build(u, i, day, np.full(4, NO_HOUR), (2, 2)) is None
    assert daypart_of(np.array([NO_HOUR, 0, 8])).tolist() == [-1, EVENING, BREAKFAST]
    assert len(DAYPARTS) == 4


def test_hourly_popularity_leaves_lines_without_an_hour_out():
    i, store = np.array([0, 1, 1, 1]), np.array(["s", "s", "s", ""])
    table = PopularityTable.build(i, np.array([8, NO_HOUR, NO_HOUR, 9]), store, 2, smoothing=0.5)
    assert table.has_hours
    overall, _reason = table.shares()
    assert np.allclose(overall, [2 / 6, 4 / 6])      # all four lines: (1 + 1) / (4 + 2), (3 + 1) / (4 + 2)
    at_store, _reason = table.shares("s")           # s: 1 A, 2 B, shrunk towards overall with k 0.5
    assert np.allclose(at_store, [(1 + 0.5 * 2 / 6) / 3.5, (2 + 0.5 * 4 / 6) / 3.5])
    at_eight, reason = table.shares("s", 8)         # 07-09 h at s: the one A line at 08 h
    assert np.allclose(at_eight, [(1 + 0.5 * at_store[0]) / 1.5, 0.5 * at_store[1] / 1.5])
    assert reason == "popular at this time of day at this store"
    untimed = PopularityTable.build(i, np.full(4, NO_HOUR), store, 2, smoothing=0.5)
    assert not untimed.has_hours and np.allclose(untimed.shares()[0], overall)
    old = PopularityTable(table.stores, table.counts[[r for r in range(table.counts.shape[0]) if r % 25 < 24]],
                          True, 0.5)                 # a model saved before: 24 rows per store, no row without hour
    assert np.allclose(old.shares("s", 8)[0].sum(), 1.0)


def test_no_day_part_shifts_nothing_and_gives_no_reason():
    u, i = np.array([0, 0, 1]), np.array([0, 1, 1])
    profile = DayPartProfile.build(u, i, np.array([1, 2, 1]), np.array([8, 19, 12]), (2, 2))
    no_daypart = int(daypart_of(NO_HOUR))
    assert profile.adjustment(np.array([0, 1]), no_daypart, 20.0).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert profile.reasons(np.array([0]), np.array([1]), no_daypart, np.array([5.0])) == [None]
