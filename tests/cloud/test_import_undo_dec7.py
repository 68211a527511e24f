"""Import undo, closing review of 7 Dec (real Ta-Feng rows, the dashboard's own import jobs, SQLite and PostgreSQL).

- An upload into a store selling in another currency than the catalogue's gave each item it created a store price
  (:func:`dangol_cloud.store_prices.price_imported_items`); its undo counted that price as a reference and left all
  its products behind.
- A history upload, then the same file imported into a store by a path that records no import (the CLI's
  ``import-purchases``: ``import_id`` None) filed the history lines under the store but left them marked as the history
  upload's: undoing it deleted the store's sales, with no warning.
- On PostgreSQL the web request "Undo this import" waited with no bound for the sale-keys lock while a zone change
  or an import of another process held it; it is refused at once now, nothing undone.
- A filed line whose time cannot be read in the history zone kept its instant but was labelled as read in that zone.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import (CatalogueItem, Customer, ProductMapping, Purchase, PurchaseImport, StorePrice,
                                 StoreSetting)
from dangol_cloud.sale_locks import hold_sale_keys
from dangol_cloud.settings import Settings
from tests.cloud.conftest import add_owner
from tests.cloud.test_cloud_web import csrf_of, sign_in
from tests.cloud.test_import_undo import _by_store, _count, _lines, _stores, _undo, _upload


def test_undo_of_an_upload_into_a_store_of_another_currency_removes_the_products_it_created(db, db_url, tmp_path,
                                                                                          ta_feng_slice):
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                        currency="KRW", _env_file=None)
    seoul, taipei = _stores(db, ("Seoul", "Asia/Seoul"), ("Taipei", "Asia/Taipei"))
    with db.transaction() as s:
        s.get(StoreSetting, seoul).currency = "KRW"
        s.get(StoreSetting, taipei).currency = "TWD"
    upload = _upload(db, settings, ta_feng_slice, taipei)
    items = _count(db, CatalogueItem)
    assert items > 100 and _count(db, ProductMapping) == items
    with db.sessions() as s:  # each product got Taipei's price in TWD (not a catalogue price in KRW)
        assert s.scalar(select(func.count()).select_from(StorePrice).where(StorePrice.store_id == taipei,
                                                                           StorePrice.currency == "TWD")) == items
    result = _undo(db, upload)
    assert (result.lines, result.products) == (3000, items)
    assert result.customers > 50 and _count(db, Customer) == 0
    assert (_count(db, Purchase), _count(db, CatalogueItem), _count(db, ProductMapping), _count(db, StorePrice)) \
        == (0, 0, 0, 0)


def test_undo_of_a_history_upload_keeps_what_an_unrecorded_store_import_filed(db, db_url, tmp_path, ta_feng_slice):
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                        _env_file=None)
    (seoul,) = _stores(db, ("Seoul", "Asia/Seoul"))
    history = _upload(db, settings, ta_feng_slice, None)
    with db.transaction() as s:  # the same sales into Seoul as `dangol-cloud import-purchases --store` does
        report = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                             tz="UTC", store_id=seoul)
    assert (report.inserted, report.filed) == (0, 3000) and _by_store(db) == {seoul: 3000}
    with db.sessions() as s:  # no upload of the dashboard holds them now
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.import_id == history)) == 0
    seoul_lines = _lines(db)
    customers, items = _count(db, Customer), _count(db, CatalogueItem)
    result = _undo(db, history)
    assert (result.lines, result.returned, result.handed_on, result.customers, result.products) == (0, 0, 0, 0, 0)
    assert _by_store(db) == {seoul: 3000} and _lines(db) == seoul_lines
    assert (_count(db, Customer), _count(db, CatalogueItem)) == (customers, items)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_undo_is_refused_at_once_while_another_session_holds_the_sale_keys_lock(db, db_url, tmp_path,
                                                                                  ta_feng_slice):
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                        _env_file=None)
    (seoul,) = _stores(db, ("Seoul", "Asia/Seoul"))
    upload = _upload(db, settings, ta_feng_slice, seoul)
    add_owner(db)
    client = create_app(settings, db=db, TESTING=True).test_client()
    sign_in(client)
    token = csrf_of(client.get("/purchases/").get_data(as_text=True))
    before = _lines(db)
    answer = {}

    def confirmed_undo():
        answer["page"] = client.post(f"/purchases/imports/{upload}/undo", data={"csrf_token": token,
                                                                                "confirm": "yes"},
                                     follow_redirects=True)

    with db.transaction() as zone_change:  # a zone change (or re-time, customer link) of another process, mid-way
        hold_sale_keys(zone_change)
        started = time.monotonic()
        thread = threading.Thread(target=confirmed_undo, daemon=True)
        thread.start()
        thread.join(15)
        waited = time.monotonic() - started
        answered = not thread.is_alive()
    thread.join(60)  # the lock is released: an undo that waited for it goes on now
    assert answered and waited < 15, "the undo request waited for the sale-keys lock"
    page = answer["page"]
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Nothing was undone" in text and "a zone change or an import is running" in text
    assert _lines(db) == before
    with db.sessions() as s:
        assert s.get(PurchaseImport, upload).undone_at is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_undo_is_refused_while_a_zone_change_runs(db, db_url, tmp_path, ta_feng_slice):
    """A store's zone change job (waiting here for an import of another process) re-keys sales: no undo meanwhile."""
    from dangol_cloud.sale_locks import share_sale_keys

    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                        _env_file=None)
    (seoul,) = _stores(db, ("Seoul", "Asia/Seoul"))
    upload = _upload(db, settings, ta_feng_slice, seoul)
    add_owner(db)
    app = create_app(settings, db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/purchases/").get_data(as_text=True))
    with db.transaction() as importing:
        share_sale_keys(importing)
        started = client.post(f"/stores/{seoul}/timezone", data={"csrf_token": token, "timezone": "Asia/Tokyo",
                                                                 "confirm": "yes"})
        assert started.status_code == 303 and "/stores/zone-jobs/" in started.headers["Location"]
        job = app.extensions["dangol_zone_jobs"].running()
        assert job is not None
        page = client.post(f"/purchases/imports/{upload}/undo", data={"csrf_token": token}, follow_redirects=True)
        text = page.get_data(as_text=True)
        assert "Nothing was undone" in text and "a zone change or an import is running" in text
        assert "Undo this import into Seoul?" not in text
    job._thread.join(60)
    assert job.error is None and job.moved == 3000
    page = client.post(f"/purchases/imports/{upload}/undo", data={"csrf_token": token})
    assert "Undo this import into Seoul?" in page.get_data(as_text=True)  # its confirmation, once the change is done


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_returned_line_whose_time_cannot_be_read_keeps_its_zone_and_is_counted(db, db_url, tmp_path, ta_feng_slice,
                                                                                 caplog):
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                        _env_file=None)
    (taipei,) = _stores(db, ("Taipei", "Asia/Taipei"))
    _upload(db, settings, ta_feng_slice, None)
    into = _upload(db, settings, ta_feng_slice, taipei)
    with db.transaction() as s:  # a zone name this system's tz database no longer knows
        line = s.scalars(select(Purchase).order_by(Purchase.id).limit(1)).one()
        line.read_zone, odd, instant = "Mars/Olympus_Mons", line.id, line.ts
    with caplog.at_level("WARNING", logger="dangol_cloud.import_undo"):
        result = _undo(db, into)
    assert (result.returned, result.unread) == (3000, 1)
    assert "1 of them kept at their instant and the zone they were read in" in result.describe()
    assert any(f"purchase {odd} " in record.getMessage() and "Mars/Olympus_Mons" in record.getMessage() for record in caplog.records)
    with db.sessions() as s:
        line = s.get(Purchase, odd)
        assert (line.store_id, line.read_zone, line.ts) == (None, "Mars/Olympus_Mons", instant)
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.read_zone == "UTC")) == 2999
