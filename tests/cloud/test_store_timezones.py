"""A chain across time zones: each store may have its own zone (Stores page). Its imports read naive sale times in
that zone, training reads its sales' hours in it, and its doors get it in ``catalogue/1``; the other stores keep the
``TIMEZONE`` setting. Real Ta-Feng rows, real databases (SQLite and PostgreSQL), a real Mosquitto and the owner's
Stores page in headless Chromium."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.importers import PurchaseRow, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import ProductMapping, Purchase, Store, StoreSetting
from dangol_cloud.publishing import catalogue_messages, publish_catalogue_version
from dangol_cloud.settings import Settings
from dangol_cloud.store_zones import store_zones
from dangol_cloud.training import load_frames

from .conftest import owner_database, screenshot_page, serving, sign_in_owner


def _two_stores(db) -> tuple[str, str]:
    """``(Taipei store id with its own zone Asia/Taipei, Berlin store id without one)``."""
    with db.transaction() as s:
        taipei, berlin = Store(name="Taipei", ref="tpe"), Store(name="Berlin", ref="ber")
        s.add_all([taipei, berlin])
        s.flush()
        s.add(StoreSetting(store_id=taipei.id, timezone="Asia/Taipei"))
        return taipei.id, berlin.id


def _file_times(path) -> list[datetime]:
    """The naive sale times of a Ta-Feng file's valid rows (dates: local midnight)."""
    times = [row.ts for row in parse_purchases(path, "ta-feng") if isinstance(row, PurchaseRow)]
    assert times and all(t.tzinfo is None for t in times)
    return sorted(times)


def test_a_stores_sales_are_read_and_trained_in_its_own_zone(db, ta_feng_slice):
    taipei, berlin = _two_stores(db)
    with db.transaction() as s:  # the same real rows, once as each store's sales
        for store in (taipei, berlin):
            import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                        store_id=store)
    naive = _file_times(ta_feng_slice)
    with db.sessions() as s:
        stored = {store: sorted(ts.replace(tzinfo=None) for ts in s.scalars(select(Purchase.ts)
                                                                            .where(Purchase.store_id == store)))
                  for store in (taipei, berlin)}
        frames, _items = load_frames(s, "UTC")
    assert stored[berlin] == naive                                         # the TIMEZONE setting: UTC
    assert stored[taipei] == [t - timedelta(hours=8) for t in naive]       # Taipei midnight = 16:00 UTC the day before
    for store in (taipei, berlin):                                         # training sees each store's wall clock
        local = sorted(frames.loc[frames["store"] == store, "ts"])
        assert [pd.Timestamp(t) for t in naive] == local
    assert set(frames["ts"].dt.hour) == {0}


def test_the_dashboard_counts_each_stores_sales_at_its_own_hours(db, ta_feng_slice):
    from dangol_cloud.analytics import compute

    taipei, berlin = _two_stores(db)
    with db.transaction() as s:  # Ta-Feng gives dates only: every sale at local midnight, in either store
        for store in (taipei, berlin):
            import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                        tz="Europe/Berlin", store_id=store)
    with db.sessions() as s:
        a = compute(s, tz="Europe/Berlin", since=datetime(2000, 1, 1).astimezone(), until=datetime(2002, 1, 1)
                    .astimezone())
    by_hour = [sum(day[h] for day in a.heatmap) for h in range(24)]
    assert by_hour[0] > 0 and sum(by_hour) == by_hour[0]      # before: the Taipei store's sales at 17:00 Berlin


def test_each_stores_doors_get_its_own_zone(db, ta_feng_slice):
    taipei, berlin = _two_stores(db)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
        map_products(s, list(s.scalars(select(ProductMapping.product_id)))[:20], "self", by="owner")
        publish_catalogue_version(s, published_by="owner")
    with db.sessions() as s:
        stores = list(s.scalars(select(Store).where(Store.id.in_([taipei, berlin]))))
        for default in (None, "Europe/Berlin"):
            got = {topic: proto.parse_payload(topic, payload)
                   for topic, payload, _retain in catalogue_messages(s, stores, "EUR", timezone=default)}
            assert got[proto.catalogue_topic(taipei)].timezone == "Asia/Taipei"
            assert got[proto.catalogue_topic(berlin)].timezone == default


def test_an_unknown_stored_zone_names_the_store(db):
    taipei, _berlin = _two_stores(db)
    with db.transaction() as s:
        s.get(StoreSetting, taipei).timezone = "Asia/Atlantis"   # e.g. written by hand, or dropped from tzdata
    with db.sessions() as s, pytest.raises(ValueError, match=f"store {taipei}.*Asia/Atlantis"):
        store_zones(s)


@pytest.mark.slow
def test_the_owner_sets_a_stores_zone_on_the_stores_page(browser, tmp_path, ta_feng_slice):
    broker, url, db, store_id = owner_database(tmp_path)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="zones", timezone="Europe/Berlin",
                        _env_file=None)
    try:
        with serving(create_app(settings, db=db)) as base:
            folder, page = screenshot_page(browser, tmp_path, "store-zone", 15_000)
            sign_in_owner(page, base)
            page.goto(base + "/stores/")
            field = page.locator(f"#tz-{store_id}")
            assert field.get_attribute("placeholder") == "Europe/Berlin"   # the setting until the store has its own
            field.fill("Mars/Olympus_Mons")
            field.locator("xpath=following-sibling::button").click()
            assert "not a known IANA time zone" in page.inner_text(".flash.error")
            with db.sessions() as s:
                assert store_zones(s) == {}                                 # nothing stored
            page.locator(f"#tz-{store_id}").fill("Asia/Taipei")
            page.locator(f"#tz-{store_id}").locator("xpath=following-sibling::button").click()
            assert "follow Asia/Taipei" in page.inner_text(".flash.success")
            assert page.locator(f"#tz-{store_id}").input_value() == "Asia/Taipei"
            page.screenshot(path=str(folder / "stores.png"))
            with db.sessions() as s:
                assert store_zones(s) == {store_id: "Asia/Taipei"}
            page.locator(f"#tz-{store_id}").fill("")                       # back to the setting
            page.locator(f"#tz-{store_id}").locator("xpath=following-sibling::button").click()
            assert "follow Europe/Berlin" in page.inner_text(".flash.success")
            with db.sessions() as s:
                assert store_zones(s) == {}
            # once the store holds imported sales (file times read as Berlin time), its zone stays: another would shift
            # their hours, and importing the same file again would store every sale a second time
            with db.transaction() as s:
                first = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng",
                                    key_prefix="ta-feng", tz="Europe/Berlin", store_id=store_id)
            page.locator(f"#tz-{store_id}").fill("Asia/Taipei")
            page.locator(f"#tz-{store_id}").locator("xpath=following-sibling::button").click()
            refused = page.inner_text(".flash.error")
            assert "keeps Europe/Berlin" in refused and "before its first import" in refused
            with db.transaction() as s:
                assert store_zones(s) == {}                                 # nothing changed
                again = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng",
                                    key_prefix="ta-feng", tz="Europe/Berlin", store_id=store_id)
            assert again.inserted == 0 and again.duplicates == first.inserted > 0
    finally:
        db.dispose()
        broker.stop()
