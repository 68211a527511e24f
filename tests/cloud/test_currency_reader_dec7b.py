"""No dashboard page (GET) writes the catalogue's currency, and one reader of the stores' currencies.

Before: the first GET of the catalogue page (or an item form, an item's page) stored the catalogue's currency and
committed — a read that wrote. Now ``dangol-cloud serve`` stores it at start-up and the writes that depend on it (a
store added or given a currency, a price saved, an import, a publish) store it first; pages only read it
(:func:`dangol_cloud.store_prices.read_catalogue_currency`). The stores' currencies have one reader
(:func:`dangol_cloud.store_prices.store_currencies`), which the ``money`` filter, a customer's currency
(:func:`~dangol_cloud.store_prices.shared_currency`) and the catalogue's currency all use. Real Flask app, real
SQLite and PostgreSQL, the real CLI.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import event, select

from dangol_cloud.app import create_app
from dangol_cloud.models import CatalogueItem, Customer, MenuSetting, Purchase, Store, StoreSetting
from dangol_cloud.settings import Settings
from dangol_cloud.store_prices import CURRENCY_KEY, read_catalogue_currency, shared_currency, store_currencies

from .conftest import add_owner
from .test_cloud_web import sign_in


def _seoul_cafe(db) -> tuple[str, str, str]:
    """Seoul selling in won, a croissant at ₩3,800 and a customer who bought one there; nothing stored under
    :data:`CURRENCY_KEY`. Returns (store id, item id, customer id)."""
    add_owner(db)
    with db.transaction() as s:
        seoul = Store(name="Seoul", ref="sel")
        croissant = CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=3800, tags=[])
        mina = Customer(display_name="Mina Park")
        s.add_all([seoul, croissant, mina])
        s.flush()
        s.add(StoreSetting(store_id=seoul.id, currency="KRW"))
        s.add(Purchase(customer_id=mina.id, item_id=croissant.id, quantity=1, amount=3800, store_id=seoul.id,
                       ts=datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc), source="csv", idempotency_key="k1"))
        return seoul.id, croissant.id, mina.id


def _settings(tmp_path, url: str) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="k", currency="EUR", _env_file=None)


def _menu_settings(db) -> dict[str, str]:
    with db.sessions() as s:
        return {row.key: row.value for row in s.scalars(select(MenuSetting))}


def test_no_page_writes_the_catalogue_currency(db, db_url, tmp_path):
    _seoul, item, customer = _seoul_cafe(db)
    app = create_app(_settings(tmp_path, db_url), db=db, TESTING=True)
    assert CURRENCY_KEY not in _menu_settings(db)  # the app factory stores nothing: this GET is the first reader
    client = app.test_client()
    sign_in(client)
    before = _menu_settings(db)
    commits: list[object] = []

    def count(conn) -> None:
        commits.append(conn)

    event.listen(db.engine, "commit", count)
    try:
        pages = {url: client.get(url) for url in ("/catalogue/", "/catalogue/new", f"/catalogue/{item}",
                                                  f"/catalogue/{item}/about", f"/customers/{customer}")}
    finally:
        event.remove(db.engine, "commit", count)
    assert {url: r.status_code for url, r in pages.items()} == dict.fromkeys(pages, 200)
    assert "Catalogue prices are in KRW" in pages["/catalogue/"].get_data(as_text=True)  # read, as it would be stored
    assert "Price (KRW)" in pages["/catalogue/new"].get_data(as_text=True)
    assert "₩3,800" in pages[f"/customers/{customer}"].get_data(as_text=True)
    assert _menu_settings(db) == before and CURRENCY_KEY not in before
    assert commits == [], f"GET pages committed {len(commits)} time(s)"


def test_serve_stores_the_catalogue_currency_at_start(tmp_path, sqlite_url, monkeypatch):
    """``dangol-cloud serve`` stores it before serving (the stores' own currency when they share one), so every
    page after reads a stored value."""
    from dangol_cloud.cli import main as cli
    from dangol_cloud.db import Database

    from .conftest import DEV_KEY_BYTES

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    _seoul_cafe(db)
    assert CURRENCY_KEY not in _menu_settings(db)
    for var in ("DANGOL_MQTT_URL", "DANGOL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DANGOL_CURRENCY", "EUR")
    monkeypatch.setattr("waitress.serve", lambda *args, **kwargs: None)  # start, store, and stop at once
    monkeypatch.setattr("dangol_cloud.background.start_background", lambda app: (lambda: None))
    assert cli(["serve", "--port", "8999"]) == 0
    assert _menu_settings(db)[CURRENCY_KEY] == "KRW"
    db.dispose()


def test_one_reader_of_the_stores_currencies(db):
    """Seoul in won, Taipei in New Taiwan dollars, Busan without its own (the CURRENCY setting, EUR)."""
    with db.transaction() as s:
        seoul, taipei, busan = Store(name="Seoul", ref="sel"), Store(name="Taipei", ref="tpe"), Store(name="Busan")
        s.add_all([seoul, taipei, busan])
        s.flush()
        s.add_all([StoreSetting(store_id=seoul.id, currency="KRW"), StoreSetting(store_id=taipei.id, currency="TWD"),
                   StoreSetting(store_id=busan.id, timezone="Asia/Seoul")])  # a row without a currency
        ids = seoul.id, taipei.id, busan.id
    sel, tpe, bus = ids
    with db.sessions() as s:
        assert store_currencies(s, "EUR") == [(bus, "Busan", "EUR"), (sel, "Seoul", "KRW"), (tpe, "Taipei", "TWD")]
        assert shared_currency(s, [sel], "EUR") == "KRW"
        assert shared_currency(s, [sel, sel], "EUR") == "KRW"
        assert shared_currency(s, [sel, tpe], "EUR") == "EUR"  # they differ
        assert shared_currency(s, [bus], "USD") == "USD"  # no currency of its own
        for odd in ([], [None], [sel, None], ["a-store-removed"]):  # none, a store-less sale, an unknown id
            assert shared_currency(s, odd, "EUR") == "EUR", odd
        assert shared_currency(s, None, "EUR") == "EUR"  # every store: they differ
        assert read_catalogue_currency(s, "EUR") == "EUR"
    with db.transaction() as s:
        s.get(StoreSetting, tpe).currency = "KRW"
        s.get(StoreSetting, bus).currency = "KRW"
    with db.sessions() as s:
        assert shared_currency(s, None, "EUR") == "KRW"
        assert read_catalogue_currency(s, "EUR") == "KRW"
    assert CURRENCY_KEY not in _menu_settings(db)  # read only


def test_a_page_reads_the_stored_currency_not_the_stores(db, db_url, tmp_path):
    """Once stored, the pages show the stored currency even when the stores now all sell in another one."""
    stored = "JPY"
    _seoul_cafe(db)
    with db.transaction() as s:
        s.add(MenuSetting(key=CURRENCY_KEY, value=stored))
    app = create_app(_settings(tmp_path, db_url), db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    assert f"Catalogue prices are in {stored}" in client.get("/catalogue/").get_data(as_text=True)
    with db.sessions() as s:
        assert read_catalogue_currency(s, "EUR") == stored
