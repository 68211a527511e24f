"""A chain selling in won (Seoul) and New Taiwan dollars (Taipei) prices its menu per store: each door gets its own
store's price in its own currency, or none — never the number of another currency (before: the catalogue's one
price went to every store, so a ₩3,800 croissant read NT$3,800 in Taipei). Real database (both backends), a real
Mosquitto read as a door reads it, and the item form through the real Flask app.
"""

from __future__ import annotations

import json
import re
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import CatalogueItem, Store, StoreSetting
from dangol_cloud.publishing import ensure_current_version, publish
from dangol_cloud.settings import Settings
from dangol_edge.web.formatting import house_menu

from .conftest import DEV_KEY_BYTES, add_owner
from .test_cloud_web import csrf_of, sign_in


def _chain(db, seoul_currency: str = "KRW", taipei_currency: str = "TWD") -> dict[str, str]:
    """Seoul and Taipei stores in their currencies, a croissant at 3,800 and an americano at 4,500 (catalogue)."""
    with db.transaction() as s:
        seoul, taipei = Store(name="Seoul", ref="sel"), Store(name="Taipei", ref="tpe")
        croissant = CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=3800)
        americano = CatalogueItem(ref="americano", name="Americano", category="Coffee", price=4500)
        s.add_all([seoul, taipei, croissant, americano])
        s.flush()
        s.add_all([StoreSetting(store_id=seoul.id, currency=seoul_currency),
                   StoreSetting(store_id=taipei.id, currency=taipei_currency)])
        return {"seoul": seoul.id, "taipei": taipei.id, "croissant": croissant.id, "americano": americano.id}


def _retained_catalogues(broker, store_ids: list[str]) -> dict[str, tuple[bytes, proto.Catalogue]]:
    """``{store id: (raw payload, parsed catalogue)}`` as each store's door receives its retained catalogue."""
    got: dict[str, tuple[bytes, proto.Catalogue]] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"door-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[3],
                                                        (m.payload, proto.parse_payload(m.topic, m.payload)))
    client.on_subscribe = lambda *a: done.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe([(proto.catalogue_topic(sid), 1) for sid in store_ids])
        assert done.wait(5)
        threading.Event().wait(0.8)  # the retained messages follow the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def _publish(db, broker, currency: str) -> dict[str, tuple[bytes, proto.Catalogue]]:
    with db.transaction() as s:
        ensure_current_version(s, published_by="owner")
        report = publish(s, broker.url, currency=currency, menus=False)
        stores = list(s.scalars(select(Store.id)))
    assert report.catalogue == len(stores)
    return _retained_catalogues(broker, stores)


def _prices(catalogue: proto.Catalogue) -> dict[str, float | None]:
    return {i.name: i.price for i in catalogue.items}


def test_a_store_in_another_currency_never_gets_the_catalogue_number(db, mosquitto):
    """CURRENCY=KRW: Seoul shows the catalogue prices; Taipei (TWD), with no price of its own, shows none."""
    ids = _chain(db)
    got = _publish(db, mosquitto, "KRW")
    seoul_raw, seoul = got[ids["seoul"]]
    taipei_raw, taipei = got[ids["taipei"]]
    assert seoul.currency == "KRW" and _prices(seoul) == {"Croissant": 3800, "Americano": 4500}
    assert taipei.currency == "TWD"
    assert _prices(taipei) == {"Croissant": None, "Americano": None}  # before: 3800 and 4500, read as NT$
    assert b'"price":3800' not in taipei_raw and b'"price":4500' not in taipei_raw
    shown = [row for group in house_menu(taipei) for row in group["items"]]
    assert shown and all(row["price"] == "" for row in shown)  # the door lists the items without a price


def test_each_store_gets_its_own_price_in_its_currency(db, mosquitto):
    """A Taipei price set for the croissant reaches Taipei only; Seoul keeps the catalogue price."""
    from dangol_cloud.store_prices import set_store_prices

    ids = _chain(db)
    with db.transaction() as s:
        set_store_prices(s, ids["croissant"], {ids["taipei"]: (95.0, "TWD")})
    got = _publish(db, mosquitto, "KRW")
    seoul_raw, seoul = got[ids["seoul"]]
    taipei_raw, taipei = got[ids["taipei"]]
    assert _prices(seoul) == {"Croissant": 3800, "Americano": 4500}
    assert _prices(taipei) == {"Croissant": 95, "Americano": None}
    assert b'"price":3800' not in taipei_raw and b'"price":95' not in seoul_raw
    assert "store_prices" not in json.loads(taipei_raw)["items"][0]  # the other stores' prices stay in the cloud
    door = {row["name"]: row["price"] for group in house_menu(taipei) for row in group["items"]}
    assert door == {"Croissant": "NT$95.00", "Americano": ""}


def test_the_catalogue_currency_setting_reaches_no_store_selling_otherwise(db, mosquitto):
    """CURRENCY=EUR and no store sells in euros: the catalogue prices (euros) go nowhere; each store gets only the
    prices set for it, in its currency."""
    from dangol_cloud.store_prices import set_store_prices

    ids = _chain(db)
    with db.transaction() as s:
        set_store_prices(s, ids["croissant"], {ids["seoul"]: (3800.0, "KRW"), ids["taipei"]: (95.0, "TWD")})
    got = _publish(db, mosquitto, "EUR")
    assert _prices(got[ids["seoul"]][1]) == {"Croissant": 3800, "Americano": None}
    assert _prices(got[ids["taipei"]][1]) == {"Croissant": 95, "Americano": None}


def test_a_price_set_before_the_store_changed_currency_is_not_sent(db, mosquitto):
    """Taipei's NT$95 is kept when the store's currency becomes yen, but the door gets no price (not ¥95)."""
    from dangol_cloud.store_prices import set_store_prices

    ids = _chain(db)
    with db.transaction() as s:
        set_store_prices(s, ids["croissant"], {ids["taipei"]: (95.0, "TWD")})
        s.get(StoreSetting, ids["taipei"]).currency = "JPY"
    got = _publish(db, mosquitto, "KRW")
    assert got[ids["taipei"]][1].currency == "JPY"
    assert _prices(got[ids["taipei"]][1]) == {"Croissant": None, "Americano": None}


def test_a_store_price_is_frozen_by_publish(db):
    """A store price changed after a Publish makes the next Publish a new version (the stores get it then)."""
    from dangol_cloud.store_prices import set_store_prices

    ids = _chain(db)
    with db.transaction() as s:
        first = ensure_current_version(s, published_by="owner").version
    with db.transaction() as s:
        assert ensure_current_version(s, published_by="owner").version == first  # nothing changed
        set_store_prices(s, ids["croissant"], {ids["taipei"]: (95.0, "TWD")})
    with db.transaction() as s:
        assert ensure_current_version(s, published_by="owner").version == first + 1


# --- the item form ---------------------------------------------------------------------------------------------
@pytest.fixture
def chain_web(tmp_path, sqlite_url):
    """The dashboard of a chain (CURRENCY=KRW) with Seoul (KRW) and Taipei (TWD) stores and two items."""
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    ids = _chain(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", currency="KRW",
                        _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    yield app, db, ids
    db.dispose()


def _field(store_id: str) -> str:
    return "store_price_" + store_id.replace("-", "")


def _post_item(client, item_id: str, **fields) -> str:
    token = csrf_of(client.get(f"/catalogue/{item_id}").get_data(as_text=True))
    data = {"csrf_token": token, "name": "Croissant", "category": "Bakery", "price": "3800", "available": "y",
            **fields}
    return client.post(f"/catalogue/{item_id}", data=data, follow_redirects=True).get_data(as_text=True)


def _stored(db, item_id: str) -> dict:
    from dangol_cloud.store_prices import prices_by_item

    with db.sessions() as s:
        return prices_by_item(s, [item_id]).get(item_id, {})


def test_the_item_form_sets_a_store_price_in_that_stores_currency(chain_web):
    app, db, ids = chain_web
    client = app.test_client()
    sign_in(client)
    form = client.get(f"/catalogue/{ids['croissant']}").get_data(as_text=True)
    assert "Price at each store" in form and "Taipei (TWD)" in form and "Seoul (KRW)" in form
    assert "Catalogue price (KRW)" in form
    page = _post_item(client, ids["croissant"], **{_field(ids["taipei"]): "95"})
    assert "Saved" in page
    assert _stored(db, ids["croissant"]) == {ids["taipei"]: {"price": 95.0, "currency": "TWD"}}
    listing = client.get("/catalogue/").get_data(as_text=True)
    assert "Taipei: NT$95.00" in listing and "₩3,800" in listing
    assert "Taipei: no price" in listing  # the americano has no Taipei price
    detail = client.get(f"/catalogue/{ids['croissant']}/about").get_data(as_text=True)
    assert "₩3,800" in detail and "Taipei: NT$95.00" in detail  # the item's page names the store's own price
    again = client.get(f"/catalogue/{ids['croissant']}").get_data(as_text=True)
    assert re.search(rf'name="{_field(ids["taipei"])}"[^>]*value="95.00"', again)
    _post_item(client, ids["croissant"], **{_field(ids["taipei"]): ""})  # blank: back to none
    assert _stored(db, ids["croissant"]) == {}


@pytest.mark.parametrize("store, typed, says", [
    ("taipei", "-1", "Price at Taipei (TWD): Enter a price from 0"),
    ("taipei", "Infinity", "Price at Taipei (TWD): Enter a price from 0"),
    ("taipei", "NaN", "Price at Taipei (TWD): Enter a price from 0"),
    ("taipei", "1e99", "Price at Taipei (TWD): Enter a price from 0"),
    ("taipei", "12.345", "Price at Taipei (TWD): New Taiwan Dollar (TWD) prices have at most 2 decimals"),
    ("taipei", "95 dollars", "Price at Taipei (TWD): Not a valid decimal value"),
    ("seoul", "4500.5", "Price at Seoul (KRW): South Korean Won (KRW) has no smaller unit"),
])
def test_hostile_store_prices_are_refused_by_name(chain_web, store, typed, says):
    app, db, ids = chain_web
    client = app.test_client()
    sign_in(client)
    page = _post_item(client, ids["croissant"], price="4000", **{_field(ids[store]): typed})
    assert says in page.replace("&#39;", "'"), page[page.find("store-prices"):][:2000]
    assert _stored(db, ids["croissant"]) == {}  # nothing saved: neither the store price nor the rest of the form
    with db.sessions() as s:
        assert s.get(CatalogueItem, ids["croissant"]).price == 3800


def test_a_field_of_an_unknown_store_is_ignored(chain_web):
    app, db, ids = chain_web
    client = app.test_client()
    sign_in(client)
    page = _post_item(client, ids["croissant"], **{_field(str(uuid.uuid4())): "1", "store_price_x": "2"})
    assert "Saved" in page and _stored(db, ids["croissant"]) == {}


def test_a_single_cafe_has_no_store_price_fields(tmp_path, sqlite_url):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    with db.transaction() as s:
        s.add(Store(name="Seoul", ref="sel"))
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", currency="KRW",
                              _env_file=None), db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    form = client.get("/catalogue/new").get_data(as_text=True)
    assert "Price (KRW)" in form and "Price at each store" not in form
    db.dispose()


def test_an_imported_items_price_goes_to_the_currency_it_was_sold_in(db):
    """For the import (``dangol_cloud.ingest`` to call): Taipei's average sale price becomes the Taipei price, the
    won lines' (Seoul's and, with CURRENCY=KRW, the store-less history's) the catalogue price — never pooled."""
    from dangol_cloud.store_prices import price_imported_items

    ids = _chain(db)
    with db.transaction() as s:
        bun = CatalogueItem(ref="100105", name="100105", price=None)
        s.add(bun)
        s.flush()
        written = price_imported_items(s, {bun.id: {ids["taipei"]: (190.0, 2.0), ids["seoul"]: (7000.0, 2.0),
                                                    None: (3700.0, 1.0)},
                                           ids["americano"]: {ids["taipei"]: (1e12, 1.0)}}, "KRW", 10_000_000)
        bun_id = bun.id
    assert written == 2
    with db.sessions() as s:
        assert s.get(CatalogueItem, bun_id).price == 3567  # (7000 + 3700) / 3, whole won; before: the TWD pooled in
        assert s.get(CatalogueItem, ids["americano"]).price == 4500  # an average beyond the bounds is left out
    assert _stored(db, bun_id) == {ids["taipei"]: {"price": 95.0, "currency": "TWD"}}
    assert _stored(db, ids["americano"]) == {}


def test_the_form_says_when_no_store_sells_in_the_catalogue_currency(tmp_path, sqlite_url):
    """CURRENCY=EUR, stores in won and New Taiwan dollars: the form says the euro price reaches no door."""
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    ids = _chain(db)
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", currency="EUR",
                              _env_file=None), db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    form = client.get(f"/catalogue/{ids['croissant']}").get_data(as_text=True)
    assert "Catalogue price (EUR)" in form and "No store sells in EUR: the catalogue price reaches no door" in form
    assert form.count("Blank: this store&#39;s door shows no price") == 2
    db.dispose()


def test_a_price_typed_for_a_currency_the_store_left_meanwhile_is_refused(chain_web):
    """The form showed Taipei in TWD; the owner (another tab) switched Taipei to yen before Save: the NT$ number is
    refused by name, not saved as yen. A store added after the form was opened keeps its price."""
    app, db, ids = chain_web
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/catalogue/{ids['croissant']}").get_data(as_text=True))
    with db.transaction() as s:
        s.get(StoreSetting, ids["taipei"]).currency = "JPY"
        busan = Store(name="Busan", ref="pus")
        s.add(busan)
        s.flush()
        s.add(StoreSetting(store_id=busan.id, currency="KRW"))
        busan_id = busan.id
    from dangol_cloud.store_prices import set_store_prices

    with db.transaction() as s:
        set_store_prices(s, ids["croissant"], {busan_id: (4000.0, "KRW")})
    data = {"csrf_token": token, "name": "Croissant", "price": "3800", "available": "y",
            _field(ids["taipei"]): "95", "store_currency_" + ids["taipei"].replace("-", ""): "TWD",
            _field(ids["seoul"]): "", "store_currency_" + ids["seoul"].replace("-", ""): "KRW"}
    page = client.post(f"/catalogue/{ids['croissant']}", data=data).get_data(as_text=True)
    assert "Price at Taipei (JPY): Taipei now sells in JPY, not &#39;TWD&#39;" in page
    assert _stored(db, ids["croissant"]) == {busan_id: {"price": 4000.0, "currency": "KRW"}}
    data[_field(ids["taipei"])] = "900"
    data["store_currency_" + ids["taipei"].replace("-", "")] = "JPY"
    data["csrf_token"] = csrf_of(page)
    assert "Saved" in client.post(f"/catalogue/{ids['croissant']}", data=data,
                                  follow_redirects=True).get_data(as_text=True)
    assert _stored(db, ids["croissant"]) == {ids["taipei"]: {"price": 900.0, "currency": "JPY"},
                                             busan_id: {"price": 4000.0, "currency": "KRW"}}  # Busan not posted: kept


def test_an_import_prices_the_items_it_creates_in_the_currency_they_were_sold_in(db, tmp_path):
    """The import itself (``import_rows`` with the ``CURRENCY`` setting): a product sold at the Taipei store (TWD)
    and at Seoul (KRW) gets Seoul's average as its catalogue price (the chain's catalogue is in won) and Taipei's as
    its Taipei price — before, both were pooled into one number that Seoul showed in won."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    ids = _chain(db)
    till = tmp_path / "till.csv"
    till.write_text("customer,item,quantity,timestamp,amount,store\n"
                    "c1,milk-bread,2,2026-11-02T08:00:00,190,tpe\n"
                    "c2,milk-bread,1,2026-11-02T09:00:00,3500,sel\n"
                    "c3,milk-bread,1,2026-11-03T09:00:00,3600,sel\n")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(till, "csv"), source="csv", key_prefix="csv", tz="UTC",
                             currency="KRW")
    assert report.inserted == 3 and not report.errors
    with db.sessions() as s:
        bread = s.scalar(select(CatalogueItem).where(CatalogueItem.ref == "milk-bread"))
        assert bread.price == 3550  # Seoul's won only
        bread_id = bread.id
    assert _stored(db, bread_id) == {ids["taipei"]: {"price": 95.0, "currency": "TWD"}}
