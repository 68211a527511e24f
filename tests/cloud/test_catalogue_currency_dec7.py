"""The catalogue's currency is stored once, never inferred again (before: inferred from the stores at every read, so
a café whose one store sells in won that added a second store — new stores sell in ``CURRENCY``, EUR — had its won
prices read as euros: the new store's door got a €3,800 croissant and the first store's no price). And a store's own
price set while there were several stores stays visible and editable once the chain is back to one store (before:
still sent to the door, but shown nowhere). Real Flask app and SQLite/PostgreSQL, a real Mosquitto read as a door
reads it.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import AuditEntry, CatalogueItem, MenuSetting, Store, StoreSetting
from dangol_cloud.settings import Settings
from dangol_cloud.store_prices import CURRENCY_KEY, catalogue_currency, set_store_prices

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, add_owner
from .test_cloud_web import csrf_of, sign_in
from .test_store_prices import _field, _prices, _publish


@pytest.fixture
def cafe(tmp_path, sqlite_url):
    """The dashboard (CURRENCY=EUR) of a café with one store, Seoul, selling in won."""
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    with db.transaction() as s:
        seoul = Store(name="Seoul", ref="sel")
        s.add(seoul)
        s.flush()
        s.add(StoreSetting(store_id=seoul.id, currency="KRW"))
        seoul_id = seoul.id
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", currency="EUR",
                              _env_file=None), db=db, TESTING=True)
    yield app, db, seoul_id
    db.dispose()


def _croissant(db) -> CatalogueItem:
    with db.sessions() as s:
        return s.scalar(select(CatalogueItem).where(CatalogueItem.name == "Croissant"))


def test_adding_a_second_store_keeps_the_catalogue_in_won(cafe, mosquitto):
    app, db, seoul = cafe
    client = app.test_client()
    sign_in(client)
    form = client.get("/catalogue/new").get_data(as_text=True)
    assert "Price (KRW)" in form
    token = csrf_of(form)
    page = client.post("/catalogue/new", data={"csrf_token": token, "name": "Croissant", "category": "Bakery",
                                               "price": "3800", "available": "y"}, follow_redirects=True)
    assert "Added" in page.get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(MenuSetting, CURRENCY_KEY).value == "KRW"  # stored with the first price

    token = csrf_of(client.get("/stores/").get_data(as_text=True))  # Add store: no currency field, so CURRENCY
    created = client.post("/stores/", data={"csrf_token": token, "name": "Busan", "ref": "bus"})
    assert created.status_code == 200
    with db.sessions() as s:
        busan = s.scalar(select(Store.id).where(Store.name == "Busan"))
    assert busan is not None

    got = _publish(db, mosquitto, "EUR")
    assert got[seoul][1].currency == "KRW" and _prices(got[seoul][1]) == {"Croissant": 3800}
    assert got[busan][1].currency == "EUR" and _prices(got[busan][1]) == {"Croissant": None}  # never €3,800
    assert b'"price":3800' not in got[busan][0]

    listing = client.get("/catalogue/").get_data(as_text=True)
    assert "Catalogue prices are in KRW" in listing and "Price (KRW)" in listing
    assert "Busan: no price" in listing
    item = client.get(f"/catalogue/{_croissant(db).id}").get_data(as_text=True)
    assert "Catalogue price (KRW)" in item and "Busan (EUR)" in item and "Seoul (KRW)" in item


def test_the_stored_currency_survives_store_changes(db):
    """Once stored, neither a new store nor a store's new currency changes it; a value that is no currency code
    (edited by hand) is replaced by the inference, never used."""
    with db.transaction() as s:
        seoul = Store(name="Seoul", ref="sel")
        s.add(seoul)
        s.flush()
        s.add(StoreSetting(store_id=seoul.id, currency="KRW"))
        seoul_id = seoul.id
        assert catalogue_currency(s, "EUR") == "KRW"
    with db.transaction() as s:
        s.add(Store(name="Busan", ref="bus"))
        s.get(StoreSetting, seoul_id).currency = "JPY"
    with db.transaction() as s:
        assert catalogue_currency(s, "EUR") == "KRW"
        s.get(MenuSetting, CURRENCY_KEY).value = "won!"
    with db.transaction() as s:
        assert catalogue_currency(s, "EUR") == "EUR"  # the stores differ now: CURRENCY
    with db.sessions() as s:
        assert s.get(MenuSetting, CURRENCY_KEY).value == "EUR"


def test_a_store_price_kept_from_a_chain_still_shows_with_one_store(cafe, mosquitto):
    app, db, seoul = cafe
    with db.transaction() as s:
        busan = Store(name="Busan", ref="bus")
        croissant = CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=3800, tags=[])
        s.add_all([busan, croissant])
        s.flush()
        s.add(StoreSetting(store_id=busan.id, currency="KRW"))
        set_store_prices(s, croissant.id, {seoul: (3500.0, "KRW")})
        busan_id, item_id = busan.id, croissant.id
    client = app.test_client()
    sign_in(client)
    assert "Seoul: ₩3,500" in client.get("/catalogue/").get_data(as_text=True)

    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    client.post(f"/stores/{busan_id}/delete", data={"csrf_token": token, "confirm": "yes"})
    with db.sessions() as s:
        assert s.get(Store, busan_id) is None

    assert _prices(_publish(db, mosquitto, "EUR")[seoul][1]) == {"Croissant": 3500}  # what the door gets...
    form = client.get(f"/catalogue/{item_id}").get_data(as_text=True)
    assert re.search(rf'name="{_field(seoul)}"[^>]*value="3500"', form), form  # ...shown and editable
    assert "Seoul: ₩3,500" in client.get("/catalogue/").get_data(as_text=True)
    detail = client.get(f"/catalogue/{item_id}/about").get_data(as_text=True)
    assert "Seoul: ₩3,500" in detail

    token = csrf_of(form)  # blank: back to the catalogue price, and the fields go with the last store price
    client.post(f"/catalogue/{item_id}", data={"csrf_token": token, "name": "Croissant", "category": "Bakery",
                                               "price": "3800", "available": "y", _field(seoul): ""})
    assert _prices(_publish(db, mosquitto, "EUR")[seoul][1]) == {"Croissant": 3800}
    assert _field(seoul) not in client.get(f"/catalogue/{item_id}").get_data(as_text=True)


def test_the_owner_may_change_the_catalogue_currency(cafe, mosquitto):
    """A café that entered its prices before setting its store's currency: the catalogue was stored in EUR (its
    CURRENCY), the store now sells in won and its door shows no price, until the owner says the catalogue is in
    KRW. A code not in use is refused by name and nothing changes; the numbers are never converted."""
    app, db, seoul = cafe
    with db.transaction() as s:
        s.get(StoreSetting, seoul).currency = None  # the store still on CURRENCY (EUR)
        s.add(CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=3800, tags=[]))
        assert catalogue_currency(s, "EUR") == "EUR"
    with db.transaction() as s:
        s.get(StoreSetting, seoul).currency = "KRW"
    assert _prices(_publish(db, mosquitto, "EUR")[seoul][1]) == {"Croissant": None}  # never ₩3,800 from €3,800
    client = app.test_client()
    sign_in(client)
    listing = client.get("/catalogue/").get_data(as_text=True)
    assert "Catalogue prices are in EUR" in listing and 'id="catalogue-currency-form"' in listing
    token = csrf_of(listing)
    refused = client.post("/catalogue/currency", data={"csrf_token": token, "currency": "won"},
                          follow_redirects=True).get_data(as_text=True)
    assert "Catalogue currency: &#39;won&#39; is not an ISO 4217 currency code in use" in refused
    with db.sessions() as s:
        assert catalogue_currency(s, "EUR") == "EUR"
    done = client.post("/catalogue/currency", data={"csrf_token": token, "currency": " krw "},
                       follow_redirects=True).get_data(as_text=True)
    assert "Catalogue prices are now in KRW" in done and "not converted" in done
    assert "Catalogue prices are in KRW" in done
    assert _prices(_publish(db, mosquitto, "EUR")[seoul][1]) == {"Croissant": 3800}
    assert client.post("/catalogue/currency", data={"currency": "USD"}).status_code == 400  # no CSRF token
    with db.sessions() as s:  # who changed what every door's prices mean, and when
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "catalogue-currency")).all()
    assert [(e.actor, e.detail) for e in entries] == [(OWNER_EMAIL, "EUR -> KRW (prices not converted)")]


def test_a_chain_that_adds_a_store_before_anything_stored_the_currency_keeps_its_prices(cafe, mosquitto):
    """A café updated from before the stored currency: its won prices were entered, nothing has stored the catalogue's
    currency yet, and the first thing the owner does is add a store on the Stores page: the currency is stored from
    the one store first (won), not guessed from the two (CURRENCY, euros)."""
    app, db, seoul = cafe
    with db.transaction() as s:
        s.add(CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=3800))
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    assert client.post("/stores/", data={"csrf_token": token, "name": "Busan", "ref": "bus"}).status_code == 200
    with db.sessions() as s:
        assert s.get(MenuSetting, CURRENCY_KEY).value == "KRW"
    got = _publish(db, mosquitto, "EUR")
    assert got[seoul][1].currency == "KRW" and _prices(got[seoul][1]) == {"Croissant": 3800}
