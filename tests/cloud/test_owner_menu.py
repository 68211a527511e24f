"""Issue 11, finding 1 — POS products are not menu items: an import creates products that never reach the
door screen by themselves; the owner maps them (to an item, by name, by category, or one menu item per
product, chosen explicitly); the catalogue snapshot marks at most ``house_per_category`` items per category as
the house menu; the recommender's product picks are published as the menu items they are sold as. Real Ta-Feng
rows."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import (map_by_category, map_by_name, map_products, set_house_per_category,
                                       translate_picks)
from dangol_cloud.models import CatalogueItem, Customer, Menu, ModelVersion, ProductMapping, Purchase
from dangol_cloud.publishing import menu_messages, snapshot_items
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device, utc


def _import(db, path):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng")


def _products(s) -> list[str]:
    return list(s.scalars(select(ProductMapping.product_id).order_by(ProductMapping.product_id)))


def test_import_creates_products_and_publishes_nothing(db, ta_feng_slice):
    report = _import(db, ta_feng_slice)
    assert report.items_created > 100
    with db.sessions() as s:
        assert len(_products(s)) == report.items_created
        assert snapshot_items(s) == []  # before the fix: every imported code was a menu item
    with db.transaction() as s:  # the owner's own item is on the menu
        s.add(CatalogueItem(ref="flat-white", name="Flat White", category="Coffee", price=4.5, tags=[]))
    with db.sessions() as s:
        assert [i["name"] for i in snapshot_items(s)] == ["Flat White"]


def test_one_menu_item_per_product_keeps_the_house_menu_small(db, ta_feng_slice):
    _import(db, ta_feng_slice)
    with db.transaction() as s:
        ids = _products(s)
        assert map_products(s, ids, "self", by="owner") == len(ids)
        set_house_per_category(s, 3)
    with db.sessions() as s:
        snap = snapshot_items(s)
        per_cat: dict = {}
        for item in snap:
            per_cat[item["category"]] = per_cat.get(item["category"], 0) + item["house"]
        categories = set(s.scalars(select(CatalogueItem.category)))
        # every menu item is listed (a customer's pick may name any), the house menu is 3 per category at most
        assert max(per_cat.values()) == 3 and sum(per_cat.values()) <= 3 * len(categories) < len(ids) == len(snap)
        # the best sellers of a category are the house items
        top = s.execute(select(Purchase.item_id, func.sum(Purchase.quantity).label("q")).group_by(Purchase.item_id)
                        .order_by(func.sum(Purchase.quantity).desc()).limit(1)).one()
        assert top.item_id in {i["id"] for i in snap if i["house"]}
        assert len(json.dumps(snap)) < 200_000
    with pytest.raises(ValueError, match="between 1 and 30"):
        with db.transaction() as s:
            set_house_per_category(s, 0)


def test_map_by_category_and_by_name_never_invent_names(db, ta_feng_slice):
    _import(db, ta_feng_slice)
    with db.transaction() as s:
        ids = _products(s)
        product_names = set(s.scalars(select(CatalogueItem.name)))
        first = s.get(CatalogueItem, ids[0])
        s.add(CatalogueItem(ref="owner-item", name=first.name, category="Mine", tags=[]))  # owner uses the POS name
        s.flush()
        assert map_by_name(s, ids, by="owner") == 1
        mapped, created = map_by_category(s, ids[1:], by="owner")
        assert mapped == len(ids) - 1 and created >= 1
        categories = {s.get(CatalogueItem, i).category for i in ids[1:]}
    with db.sessions() as s:
        names = {i["name"] for i in snapshot_items(s)}
        assert names <= categories | {first.name}  # every name comes from the data (code or category)
        assert names - product_names <= categories


def test_product_picks_are_published_as_their_menu_items(db, ta_feng_slice):
    _import(db, ta_feng_slice)
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        a, b, c = _products(s)[:3]
        latte = CatalogueItem(ref="latte", name="Caffè latte", category="Coffee", price=4.0, tags=[])
        s.add(latte)
        s.flush()
        map_products(s, [a, b], latte.id, by="owner")  # two products sold as one menu item; c stays unmapped
        customer = s.scalar(select(Customer).limit(1))
        customer.display_name, customer.consent_by, customer.consent_at = "Mina Park", "staff", utc(2026, 1, 2)
        s.add(ModelVersion(version="v1", path="/nonexistent"))
        s.flush()
        s.add(Menu(customer_id=customer.id, model_version="v1",
                   picks=[{"item_id": c, "score": 3.0, "reasons": []}, {"item_id": b, "score": 2.0, "reasons": []},
                          {"item_id": a, "score": 1.0, "reasons": []}]))
        latte_id = latte.id
    with db.sessions() as s:
        from dangol_cloud.models import Store
        (topic, payload, retained), = list(menu_messages(s, [s.get(Store, store_id)]))
        picks = json.loads(payload)["items"]
        assert [p["item_id"] for p in picks] == [latte_id] and picks[0]["score"] == 2.0
    assert translate_picks([{"item_id": "x", "score": 1}], {}) == [{"item_id": "x", "score": 1}]


# --- the dashboard ---------------------------------------------------------------------------------------
@pytest.fixture
def web(tmp_path, sqlite_url):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", _env_file=None)
    yield create_app(settings, db=db, TESTING=True), db
    db.dispose()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def _signed_in(app):
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD, "csrf_token": token})
    return client


def test_dashboard_maps_products_and_bulk_edits_the_menu(web, ta_feng_slice):
    app, db = web
    _import(db, ta_feng_slice)
    client = _signed_in(app)
    html = client.get("/catalogue/").get_data(as_text=True)
    assert "product(s) from your purchase history are not on the menu" in html
    assert 'id="items"' not in html  # no wall of codes
    html = client.get("/catalogue/products").get_data(as_text=True)
    assert "no product names" in html  # Ta-Feng has codes only: said, not invented
    token = _csrf(html)
    # one menu item per product asks first, for every product in the list
    r = client.post("/catalogue/products/map", data={"csrf_token": token, "op": "self", "scope": "all",
                                                     "show": "unmapped"})
    assert r.status_code == 200 and "one by one" in r.get_data(as_text=True)
    with db.sessions() as s:
        assert snapshot_items(s) == []
    r = client.post("/catalogue/products/map", data={"csrf_token": token, "op": "self", "scope": "all",
                                                     "show": "unmapped", "confirm": "yes"})
    assert r.status_code == 302
    with db.sessions() as s:
        ids = [i["id"] for i in snapshot_items(s)][:3]
        assert ids
    # bulk: sold out, category, retire (confirmed)
    for op, extra in (("soldout", {}), ("category", {"new_category": "Snacks"})):
        client.post("/catalogue/bulk", data={"csrf_token": token, "op": op, "ids": ids, "confirm": "yes", **extra})
    with db.sessions() as s:
        items = [s.get(CatalogueItem, i) for i in ids]
        assert all(not i.available and i.category == "Snacks" for i in items)
    r = client.post("/catalogue/bulk", data={"csrf_token": token, "op": "retire", "ids": ids})
    assert r.status_code == 200 and "Retire 3 item(s)?" in r.get_data(as_text=True)
    client.post("/catalogue/bulk", data={"csrf_token": token, "op": "retire", "ids": ids, "confirm": "yes"})
    with db.sessions() as s:
        assert all(s.get(CatalogueItem, i).retired for i in ids)
    r = client.post("/catalogue/house", data={"csrf_token": token, "per_category": "2"})
    with db.sessions() as s:
        counts: dict = {}
        for item in snapshot_items(s):
            counts[item["category"]] = counts.get(item["category"], 0) + item["house"]
        assert max(counts.values()) == 2


def test_upgrading_takes_earlier_imported_items_off_the_menu(db_url, ta_feng_slice):
    """A database from before 0007, where an import made every product a menu item, keeps the owner's own
    items on the menu and turns the import-made ones into unmapped products."""
    from sqlalchemy import create_engine, text

    from dangol_cloud.db import migrate

    engine = create_engine(db_url)
    migrate(engine, "0006")
    with engine.begin() as conn:
        for iid, ref, name in (("i-1", "100101", "100101"), ("i-2", "flat-white", "Flat White")):
            conn.execute(text("INSERT INTO catalogue_items (id, ref, name, description, tags, available, retired, "
                              "created_at, updated_at) VALUES (:i, :r, :n, '', '[]', true, false, :t, :t)"),
                         {"i": iid, "r": ref, "n": name, "t": utc(2026, 1, 1)})
        conn.execute(text("INSERT INTO customers (id, status, source, created_at) VALUES ('c-1', 'active', "
                          "'import', :t)"), {"t": utc(2026, 1, 1)})
        for n, (item, source) in enumerate((("i-1", "ta-feng"), ("i-2", "ta-feng"), ("i-2", "pos"))):
            conn.execute(text("INSERT INTO purchases (customer_id, item_id, quantity, ts, source, idempotency_key) "
                              "VALUES ('c-1', :i, 1, :t, :s, :k)"), {"i": item, "t": utc(2026, 1, 2), "s": source,
                                                                      "k": f"k{n}"})
    engine.dispose()
    database = Database(db_url, data_key=DEV_KEY_BYTES)
    database.migrate()
    with database.sessions() as s:
        assert _products(s) == ["i-1"]
        assert [i["name"] for i in snapshot_items(s)] == ["Flat White"]
    database.dispose()
