"""History uploaded, then the same file into its store, in a chain whose stores read sale times in their own zones.

cloud/README.md promises that a sale uploaded as history (no store) and again into its store is filed under that
store rather than stored twice. With ``TIMEZONE`` UTC and the stores in Asia/Seoul and Asia/Taipei, the store-less
copy was read in UTC and the store's copy in Asia/Taipei: two UTC times, two keys, the match missed and every sale
was stored twice (a reviewer's run: 3,000 + 3,000). Now a store's row is compared with the store-less line under
the key it has as read in the zone store-less lines are read in, and the filed line takes the store's time and key;
the other way round (a store's file first, history after) likewise. Real Ta-Feng rows, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from dangol_cloud.importers import PurchaseRow, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Purchase, Store, StoreSetting


def _import(db, path: Path, store_id: str | None, tz: str = "UTC"):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng", tz=tz,
                           store_id=store_id)


def _by_store(db) -> dict[str | None, int]:
    with db.sessions() as s:
        return dict(s.execute(select(Purchase.store_id, func.count()).group_by(Purchase.store_id)).all())


def _stores(db, *zones: tuple[str, str]) -> list[str]:
    with db.transaction() as s:
        stores = [Store(name=name, ref=name.lower()) for name, _zone in zones]
        s.add_all(stores)
        s.flush()
        s.add_all([StoreSetting(store_id=store.id, timezone=zone) for store, (_n, zone) in zip(stores, zones)])
        return [store.id for store in stores]


def test_history_then_its_store_in_another_zone_stores_each_sale_once(db, ta_feng_slice):
    seoul, taipei = _stores(db, ("Seoul", "Asia/Seoul"), ("Taipei", "Asia/Taipei"))
    first = _import(db, ta_feng_slice, None)
    assert first.inserted > 2000 and _by_store(db) == {None: first.inserted}
    again = _import(db, ta_feng_slice, taipei)
    assert (again.inserted, again.filed, again.duplicates) == (0, first.inserted, first.inserted)
    assert _by_store(db) == {taipei: first.inserted}
    with db.sessions() as s:  # filed at the store's hours: the file's dates are Taipei midnights, read there
        stored = sorted(s.scalars(select(Purchase.ts)))
        zones = set(s.scalars(select(Purchase.read_zone)))
    dates = sorted(r.ts for r in parse_purchases(ta_feng_slice, "ta-feng") if isinstance(r, PurchaseRow))
    assert stored == sorted(d.replace(tzinfo=ZoneInfo("Asia/Taipei")).astimezone(timezone.utc) for d in dates)
    assert zones == {"Asia/Taipei"}
    assert _import(db, ta_feng_slice, taipei).inserted == 0      # the store's file again: nothing new
    assert _import(db, ta_feng_slice, None).inserted == 0        # and as history once more: nothing new
    assert _by_store(db) == {taipei: first.inserted}
    assert seoul not in _by_store(db)


def test_store_first_then_history_in_another_zone_adds_nothing(db, ta_feng_slice):
    (taipei,) = _stores(db, ("Taipei", "Asia/Taipei"))
    first = _import(db, ta_feng_slice, taipei)
    history = _import(db, ta_feng_slice, None)
    assert (history.inserted, history.duplicates) == (0, first.inserted)
    assert _by_store(db) == {taipei: first.inserted}


def test_history_read_in_a_timezone_setting_matches_a_store_in_that_zone(db, ta_feng_slice):
    """TIMEZONE Asia/Taipei and a store without its own zone: the old path, still filed (no regression)."""
    with db.transaction() as s:
        store = Store(name="Taipei", ref="taipei")
        s.add(store)
        s.flush()
        taipei = store.id
    first = _import(db, ta_feng_slice, None, tz="Asia/Taipei")
    again = _import(db, ta_feng_slice, taipei, tz="Asia/Taipei")
    assert (again.inserted, again.filed) == (0, first.inserted)
    assert _by_store(db) == {taipei: first.inserted}
