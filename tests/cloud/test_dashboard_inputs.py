"""Dashboard inputs a reviewer broke, through Flask's test client (the two-store set-up of
``test_web_hardening.py``; real Ta-Feng products for the mapping): prices must be finite and bounded and an
already stored bad price is named at Publish instead of a 500; staff see their own stores' units sold on the
POS products page; re-mapping a product that others are sold as moves them along; NUL characters in the
address or its query and out-of-range integer ids answer 400 / 404 instead of a 500 (SQLite and PostgreSQL).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select, update

from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import menu_item_map, on_menu, register_products
from dangol_cloud.models import CatalogueItem, CatalogueVersion, ProductMapping, Purchase
from dangol_cloud.web.forms import MAX_PRICE

from .conftest import utc
from .test_web_hardening import (STAFF_EMAIL, STAFF_PASSWORD, _two_stores, csrf_of, make_site,  # noqa: F401
                                 make_sqlite_site, sign_in, sqlite_web, web)


def _signed_in(app, email=None, password=None):
    client = app.test_client()
    response = sign_in(client) if email is None else sign_in(client, email, password)
    assert response.status_code == 302
    return client


def _token(client, path="/catalogue/") -> str:
    return csrf_of(client.get(path).get_data(as_text=True))


def _flat_white(db) -> str:
    with db.sessions() as s:
        return s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == "flat-white"))


# --- 1. prices ---------------------------------------------------------------------------------------------
def test_a_price_must_be_finite_and_bounded(web):
    app, db = web
    _two_stores(db)
    item_id = _flat_white(db)
    owner = _signed_in(app)
    token = _token(owner, f"/catalogue/{item_id}")
    form = {"csrf_token": token, "name": "Flat white", "available": "y"}
    for price in ("1e309", "Infinity", "-Infinity", "inf", "NaN", "1e400", f"{MAX_PRICE + 0.01:.2f}"):
        response = owner.post(f"/catalogue/{item_id}", data={**form, "price": price})
        assert response.status_code == 200, price  # the form again, with the field's error
        assert f"a price from 0 to {MAX_PRICE:,}" in response.get_data(as_text=True), price
        response = owner.post("/catalogue/new", data={**form, "price": price})
        assert response.status_code == 200, price
    with db.sessions() as s:
        assert s.scalar(select(CatalogueItem.price).where(CatalogueItem.id == item_id)) == 3.6
        assert s.scalar(select(func.count()).select_from(CatalogueItem).where(CatalogueItem.name == "Flat white")) == 1
    assert owner.post(f"/catalogue/{item_id}", data={**form, "price": f"{MAX_PRICE}"}).status_code == 302
    with db.sessions() as s:
        assert s.scalar(select(CatalogueItem.price).where(CatalogueItem.id == item_id)) == MAX_PRICE


def test_publish_names_an_item_stored_with_an_infinite_price(web):
    app, db = web
    _two_stores(db)
    item_id = _flat_white(db)
    with db.transaction() as s:  # stored before prices were bounded
        s.execute(update(CatalogueItem).where(CatalogueItem.id == item_id).values(price=float("inf")))
    for client in (_signed_in(app), _signed_in(app, STAFF_EMAIL, STAFF_PASSWORD)):
        response = client.post("/catalogue/publish", data={"csrf_token": _token(client)}, follow_redirects=True)
        page = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "Not published" in page and "“Flat white” (price)" in page
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueVersion)) == 0
    owner = _signed_in(app)
    edit = owner.get(f"/catalogue/{item_id}")  # the owner can open it to fix it
    assert edit.status_code == 200 and f"a price from 0 to {MAX_PRICE:,}" in edit.get_data(as_text=True)
    token = csrf_of(edit.get_data(as_text=True))
    assert owner.post(f"/catalogue/{item_id}", data={"csrf_token": token, "name": "Flat white", "price": "3.60",
                                                     "available": "y"}).status_code == 302
    response = owner.post("/catalogue/publish", data={"csrf_token": token}, follow_redirects=True)
    assert "Catalogue version 1 saved (1 items)" in response.get_data(as_text=True)


# --- 2. staff scope on the POS products page -----------------------------------------------------------------
def _units_sold(page: str, name: str) -> str:
    return re.search(rf"<b>{re.escape(name)}</b>.*?<td class=\"num\">([^<]*)</td>", page, re.S).group(1)


def test_staff_see_units_sold_at_their_stores_only(sqlite_web):
    app, db = sqlite_web
    ids = _two_stores(db)  # Flat white: 1 sold at store B
    item_id = _flat_white(db)
    with db.transaction() as s:
        register_products(s, [item_id], source="pos")
        s.add(Purchase(customer_id=ids["visited"], item_id=item_id, quantity=2, amount=7.2, ts=utc(2026, 1, 5, 9),
                       store_id=ids["a"], source="pos", idempotency_key="a1"))
    staff = _signed_in(app, STAFF_EMAIL, STAFF_PASSWORD)
    assert _units_sold(staff.get("/catalogue/products?show=all").get_data(as_text=True), "Flat white") == "2"
    owner = _signed_in(app)
    assert _units_sold(owner.get("/catalogue/products?show=all").get_data(as_text=True), "Flat white") == "3"


# --- 3. re-mapping moves the products sold as the re-mapped one ----------------------------------------------
def test_remapping_a_product_moves_the_products_sold_as_it(sqlite_web, ta_feng_slice):
    app, db = sqlite_web
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
        p, x, y, t = s.scalars(select(ProductMapping.product_id).order_by(ProductMapping.product_id).limit(4))
    owner = _signed_in(app)
    token = _token(owner, "/catalogue/products")

    def act(op, chosen, target=""):
        data = {"csrf_token": token, "op": op, "ids": chosen, "target": target, "show": "all", "confirm": "yes"}
        response = owner.post("/catalogue/products/map", data=data, follow_redirects=True)
        assert response.status_code == 200
        return response.get_data(as_text=True)

    act("self", [p, t])  # P and T are menu items, X and Y are sold as P
    act("map", [x, y], p)
    page = act("map", [p], t)  # P is now sold as T: so are X and Y
    assert "1 product(s) now sold as one menu item. 2 other product(s) sold as it moved with it." in page
    with db.sessions() as s:
        mapping = menu_item_map(s)
        assert mapping[p] == mapping[x] == mapping[y] == t
        assert s.scalar(select(CatalogueItem.id).where(CatalogueItem.id == p, on_menu())) is None
    page = act("unmap", [t])  # T leaves the menu: P, X and Y with it
    assert "1 product(s) taken off the menu. 3 other product(s) sold as it left the menu too." in page
    with db.sessions() as s:
        mapping = menu_item_map(s)
        assert mapping[p] is mapping[x] is mapping[y] is mapping[t] is None
    page = act("self", [p])  # and nothing moves where nothing was sold as the product
    assert "1 product(s) are now menu items. Publish" in page


# --- 4. hostile URL values ------------------------------------------------------------------------------------
NUL_URLS = ["/customers/%00", "/customers/?q=ab%00cd", "/catalogue/%00", "/catalogue/%00/about", "/catalogue/?q=%00",
            "/catalogue/products?q=%00", "/analytics/?store=%00", "/purchases/?q=%00", "/analytics/?%00=1"]


def test_nul_in_the_address_is_a_400_naming_it(web):
    app, db = web
    _two_stores(db)
    for client in (_signed_in(app), _signed_in(app, STAFF_EMAIL, STAFF_PASSWORD)):
        for url in NUL_URLS:
            response = client.get(url)
            assert response.status_code == 400, url
            text = response.get_data(as_text=True)
            assert "NUL character" in text and ("address" in text if "?" not in url else "parameter" in text), url
    owner = _signed_in(app)
    assert "&#39;q&#39;" in owner.get("/catalogue/?q=%00").get_data(as_text=True)  # names the parameter
    assert owner.get("/catalogue/?q=flat").status_code == 200


def test_integer_ids_beyond_32_bits_are_a_404(web):
    app, db = web
    _two_stores(db)
    owner = _signed_in(app)
    token = _token(owner, "/users/")
    for big in ("2147483648", "99999999999999999999", "9" * 5000):
        for path in (f"/users/{big}/role", f"/users/{big}/password", f"/users/{big}/remove",
                     f"/stores/erasure-requests/{big}/dismiss", f"/stores/erasure-requests/{big}/confirm"):
            assert owner.post(path, data={"csrf_token": token, "role": "staff"}).status_code == 404, path
    assert owner.post("/users/2147483647/role", data={"csrf_token": token, "role": "staff"}).status_code == 404
    assert app.url_map.converters["int"].__name__ == "BoundedIntConverter"
    with app.test_request_context():
        from flask import url_for

        assert url_for("auth.user_role", user_id=7) == "/users/7/role"
