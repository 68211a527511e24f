"""History uploaded again into its store: the upload form's default was "No store (history)", and uploading the
same file again into the right store stored every sale a second time (a reviewer's run: 3,436 purchases became
6,872). Now the second upload files the store-less purchases under the store, and a café with one store gets it
preselected. Real Ta-Feng rows, real SQLite and PostgreSQL, the owner's upload form in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Purchase, Store
from dangol_cloud.settings import Settings
from tests.cloud.conftest import owner_database, screenshot_page, serving, sign_in_owner
from tests.cloud.test_cloud_web import web  # noqa: F401 - the fixture

def _import(db, path: Path, store_id: str | None):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                           store_id=store_id)


def _by_store(db) -> dict[str | None, int]:
    with db.sessions() as s:
        return dict(s.execute(select(Purchase.store_id, func.count()).group_by(Purchase.store_id)).all())


def _stores(db, *names: str) -> list[str]:
    with db.transaction() as s:
        stores = [Store(name=name, ref=name.lower()) for name in names]
        s.add_all(stores)
        s.flush()
        return [store.id for store in stores]


def test_history_uploaded_again_into_its_store_is_filed_not_doubled(db, ta_feng_slice):
    (taipei,) = _stores(db, "Taipei")
    first = _import(db, ta_feng_slice, None)
    assert first.inserted > 2000
    again = _import(db, ta_feng_slice, taipei)
    assert (again.inserted, again.duplicates, again.filed) == (0, first.inserted, first.inserted)
    assert _by_store(db) == {taipei: first.inserted}          # the same sales, now the store's
    assert _import(db, ta_feng_slice, None).inserted == 0      # and as history once more: nothing new


def test_a_stores_sales_are_never_moved_to_another_store(db, ta_feng_slice):
    taipei, berlin = _stores(db, "Taipei", "Berlin")
    first = _import(db, ta_feng_slice, taipei)
    other = _import(db, ta_feng_slice, berlin)   # the same lines in another store's file: that store's sales
    assert (other.inserted, other.filed) == (first.inserted, 0)
    assert _by_store(db) == {taipei: first.inserted, berlin: first.inserted}
    assert _import(db, ta_feng_slice, None).filed == 0 and _by_store(db)[taipei] == first.inserted


def test_the_upload_form_preselects_the_only_store(browser, tmp_path):
    broker, url, db, store_id = owner_database(tmp_path)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="one-store", _env_file=None)
    try:
        with serving(create_app(settings, db=db)) as base:
            _folder, page = screenshot_page(browser, tmp_path, "upload-store", 15_000)
            sign_in_owner(page, base)
            page.goto(base + "/purchases/")
            assert page.locator("select[name=store]").input_value() == store_id
            _stores(db, "Berlin")          # a chain: the owner chooses (history stays possible)
            page.goto(base + "/purchases/")
            assert page.locator("select[name=store]").input_value() == ""
    finally:
        db.dispose()
        broker.stop()


def test_a_sale_already_stored_both_ways_is_left_as_it_is(db, ta_feng_slice, monkeypatch):
    """A database an older version doubled (the file as history, then again into its store, a reviewer's run):
    uploading it into the store once more neither fails (filing the history copy under the store's key, which its
    store copy holds, broke the unique key: IntegrityError, the whole import lost) nor adds anything."""
    (taipei,) = _stores(db, "Taipei")
    first = _import(db, ta_feng_slice, None)
    with monkeypatch.context() as m:  # the older version: no look-up of the other filing
        m.setattr("dangol_cloud.ingest._match_other_copies", lambda session, batch, probes: 0)
        assert _import(db, ta_feng_slice, taipei).inserted == first.inserted
    again = _import(db, ta_feng_slice, taipei)
    assert again.inserted == 0
    assert _by_store(db) == {None: first.inserted, taipei: first.inserted}


def test_an_imported_products_code_cannot_be_changed_on_the_item_form(web, ta_feng_slice):  # noqa: F811
    """The importer finds a POS product by the code of the purchase files; a code changed on the item form (a
    reviewer's run: name "Green tea", code green-tea) made a re-import create a new product and store its 56 sales
    twice."""
    from dangol_cloud.models import CatalogueItem

    from .test_cloud_web import csrf_of, sign_in

    app, db = web
    first = _import(db, ta_feng_slice, None)
    with db.sessions() as s:
        item_id, ref = s.execute(select(Purchase.item_id, CatalogueItem.ref)
                                 .join(CatalogueItem, CatalogueItem.id == Purchase.item_id)
                                 .group_by(Purchase.item_id, CatalogueItem.ref)
                                 .order_by(func.count().desc(), Purchase.item_id).limit(1)).one()
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/catalogue/{item_id}").get_data(as_text=True)
    response = client.post(f"/catalogue/{item_id}", data={
        "csrf_token": csrf_of(page), "name": "Green tea", "ref": "green-tea", "price": "", "description": "",
        "tags": "", "category": "", "available": "y"})
    assert response.status_code == 200 and "cannot be changed" in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(CatalogueItem, item_id).ref == ref
    again = _import(db, ta_feng_slice, None)
    assert (again.inserted, again.items_created) == (0, 0) and first.inserted > 0
