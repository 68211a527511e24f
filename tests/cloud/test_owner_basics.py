"""Issue 11, finding 9 — owner-grade basics: users and roles managed in the dashboard, password reset by the
owner, error pages (403/404) in the site's layout (the API keeps problem JSON), and an item detail page."""

from __future__ import annotations

import re

from sqlalchemy import select

from dangol_cloud.menu_mapping import map_products, register_products
from dangol_cloud.models import CatalogueItem, Customer, Purchase, User

from .conftest import OWNER_EMAIL, utc
from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the fixture


def _login(client, email, password):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def test_owner_adds_staff_resets_a_password_and_the_last_owner_stays(web):  # noqa: F811
    app, db = web
    owner = app.test_client()
    sign_in(owner)
    token = csrf_of(owner.get("/users/").get_data(as_text=True))
    page = owner.post("/users/", data={"csrf_token": token, "email": "Jo@Cafe.example", "role": "staff"})
    first = re.search(r'id="new-password"[^>]*>([^<]+)<', page.get_data(as_text=True)).group(1)
    staff = app.test_client()
    assert _login(staff, "jo@cafe.example", first).status_code == 302
    forbidden = staff.get("/users/")
    assert forbidden.status_code == 403 and "Not allowed" in forbidden.get_data(as_text=True)
    assert 'href="/customers/"' in forbidden.get_data(as_text=True)  # in the layout, with the navigation
    with db.sessions() as s:
        jo = s.scalar(select(User).where(User.email == "jo@cafe.example"))
        me = s.scalar(select(User).where(User.email == OWNER_EMAIL))
    r = owner.post(f"/users/{jo.id}/password", data={"csrf_token": token})
    assert "Reset the password of jo@cafe.example?" in r.get_data(as_text=True)
    r = owner.post(f"/users/{jo.id}/password", data={"csrf_token": token, "confirm": "yes"})
    new = re.search(r'id="new-password"[^>]*>([^<]+)<', r.get_data(as_text=True)).group(1)
    assert staff.get("/customers/").status_code == 302  # the reset ended Jo's session
    assert _login(app.test_client(), "jo@cafe.example", first).status_code != 302
    assert _login(app.test_client(), "jo@cafe.example", new).status_code == 302
    owner.post(f"/users/{me.id}/role", data={"csrf_token": token, "role": "staff"})
    with db.sessions() as s:
        assert s.get(User, me.id).role == "owner"  # the last owner stays
    owner.post(f"/users/{jo.id}/remove", data={"csrf_token": token, "confirm": "yes"})
    with db.sessions() as s:
        assert s.get(User, jo.id) is None


def test_not_found_in_layout_and_api_keeps_json(web):  # noqa: F811
    app, _db = web
    client = app.test_client()
    sign_in(client)
    r = client.get("/customers/no-such-customer")
    body = r.get_data(as_text=True)
    assert r.status_code == 404 and "Not found" in body and "Go to Today" in body
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"


def test_item_detail_counts_the_sales_of_its_products(web):  # noqa: F811
    app, db = web
    with db.transaction() as s:
        latte = CatalogueItem(ref="latte", name="Caffè latte", category="Coffee", price=4.0, tags=[])
        product = CatalogueItem(ref="100101", name="100101", category="1001", tags=[])
        ann = Customer()
        s.add_all([latte, product, ann])
        s.flush()
        register_products(s, [product.id], source="ta-feng")
        map_products(s, [product.id], latte.id, by="owner")
        s.add_all([Purchase(customer_id=ann.id, item_id=product.id, quantity=q, ts=utc(2000, 12, d), source="ta-feng",
                            idempotency_key=f"k{d}") for d, q in ((1, 2), (9, 3))])
        latte_id = latte.id
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/catalogue/{latte_id}/about").get_data(as_text=True)
    assert "Caffè latte" in page and "<code>100101</code>" in page
    assert re.search(r"Units sold \(all time\)</td><td class=\"num\">5<", page)
    assert page.count("<rect") >= 26  # weekly bars
    assert client.get("/catalogue/nope/about").status_code == 404
