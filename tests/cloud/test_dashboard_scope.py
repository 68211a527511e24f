"""Dashboard review findings on what a page shows and allows, through Flask's test client on SQLite and
PostgreSQL (and the consent card in headless Chromium):

1. a staff user's customer page counts the visits, purchases, amounts and door arrivals of their stores only;
2. consent cannot be recorded again from the dashboard once it was withdrawn (409, and no form on the page);
3. a staff user's item page counts units sold, the weekly chart, "shown" and "bought after" of their stores only.

The purchases are real Ta-Feng rows (one customer's history from the first rows of the file), split over the two
stores of :func:`tests.cloud.test_web_hardening._two_stores`: their first shopping day at store A (the staff
user's), the later days at store B.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import defaultdict
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.feedback import credit_shown_picks
from dangol_cloud.import_rows import PurchaseRow
from dangol_cloud.importers import parse_purchases
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import AuditEntry, CatalogueItem, Customer, Device, Menu, ModelVersion, Visit
from dangol_cloud.settings import Settings
from tests.broker import free_port

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, add_owner
from .test_web_hardening import (STAFF_EMAIL, STAFF_PASSWORD, _two_stores, csrf_of, make_site,  # noqa: F401
                                 sign_in, web)

CONSENT = {"recorded_by": "staff:jo", "text_version": "2026-01"}


def _one_history(ta_feng_slice) -> tuple[list[PurchaseRow], list[PurchaseRow]]:
    """The first real customer in the slice who shopped on two days or more with no product bought on both the
    first and a later day: (rows of the first day, rows of the later days)."""
    by_customer: dict[str, list[PurchaseRow]] = defaultdict(list)
    for row in parse_purchases(ta_feng_slice, "ta-feng"):
        if isinstance(row, PurchaseRow):
            by_customer[row.customer_ref].append(row)
    for rows in by_customer.values():
        first_day = min(r.ts for r in rows)
        first = [r for r in rows if r.ts == first_day]
        later = [r for r in rows if r.ts != first_day]
        if later and not {r.item_ref for r in first} & {r.item_ref for r in later}:
            return first, later
    raise AssertionError("no customer with two distinct shopping days in the Ta-Feng slice")


def _shared_regular(db, ta_feng_slice) -> dict:
    """The two stores, and a real Ta-Feng customer who shops at both: the first day's rows at store A, the later
    days' at store B, one door arrival at each store an hour before its purchases (showing that store's items),
    purchases credited to the arrivals. Returns the ids, the row lists and the item ids by product."""
    ids = _two_stores(db)
    at_a, at_b = _one_history(ta_feng_slice)
    with db.transaction() as s:
        import_rows(s, iter(at_a), source="ta-feng", key_prefix="ta-feng", store_id=ids["a"])
        import_rows(s, iter(at_b), source="ta-feng", key_prefix="ta-feng", store_id=ids["b"])
    with db.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_ref_hash.is_not(None)))
        items = dict(s.execute(select(CatalogueItem.ref, CatalogueItem.id)
                               .where(CatalogueItem.ref.in_({r.item_ref for r in at_a + at_b}))).all())
        devices = dict(s.execute(select(Device.store_id, Device.id)).all())
        for store, rows, match in ((ids["a"], at_a, 0.81), (ids["b"], at_b, 0.93)):
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=cid, device_id=devices[store], store_id=store,
                        ts=min(r.ts for r in rows).replace(tzinfo=ZoneInfo("UTC")) - timedelta(hours=1),
                        confidence=match, shown_items=list(dict.fromkeys(items[r.item_ref] for r in rows))))
        s.flush()
        credit_shown_picks(s, window=timedelta(hours=3))
    return {**ids, "regular": cid, "at_a": at_a, "at_b": at_b, "items": items}


def _client(app, email=None, password=None):
    client = app.test_client()
    assert (sign_in(client) if email is None else sign_in(client, email, password)).status_code == 302
    return client


def _summary(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", re.search(r'id="summary">(.*?)</p>', page, re.S).group(1)).split())


# --- 1. the customer page ------------------------------------------------------------------------------------
def test_staff_see_only_their_stores_sales_and_arrivals_on_a_customer_page(web, ta_feng_slice):  # noqa: F811
    app, db = web
    got = _shared_regular(db, ta_feng_slice)
    at_a, at_b = got["at_a"], got["at_b"]
    day = lambda rows: min(r.ts for r in rows)  # noqa: E731 - Ta-Feng days, shown in the site's zone (UTC)
    staff = _client(app, STAFF_EMAIL, STAFF_PASSWORD)
    page = staff.get(f"/customers/{got['regular']}").get_data(as_text=True)
    summary = _summary(page)
    assert f"{len(at_a)} purchase lines in 1 shop visits" in summary, summary
    assert f"{sum(r.amount for r in at_a):,.2f}" in summary and "1 door arrivals" in summary, summary
    assert f"last {day(at_a):%Y-%m-%d}" in summary, summary
    assert all(f"<td>{r.item_ref}</td>" not in page for r in at_b)  # store B's lines are not listed
    assert "93%" not in page and "81%" in page                      # nor store B's door arrival
    owner = _client(app)
    summary = _summary(owner.get(f"/customers/{got['regular']}").get_data(as_text=True))
    assert f"{len(at_a) + len(at_b)} purchase lines in 2 shop visits" in summary, summary
    assert f"{sum(r.amount for r in at_a + at_b):,.2f}" in summary and "2 door arrivals" in summary, summary
    assert f"last {day(at_b):%Y-%m-%d}" in summary, summary


# --- 2. consent after a withdrawal --------------------------------------------------------------------------
def test_consent_cannot_be_recorded_again_after_it_was_withdrawn(web):  # noqa: F811
    app, db = web
    cid = _two_stores(db)["visited"]
    staff = _client(app, STAFF_EMAIL, STAFF_PASSWORD)
    url = f"/customers/{cid}"
    token = csrf_of(staff.get(url).get_data(as_text=True))
    consent = {"csrf_token": token, "display_name": "Alma", **CONSENT}
    assert staff.post(url + "/consent", data=consent).status_code == 302
    assert staff.post(url + "/withdraw", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    r = staff.post(url + "/consent", data=consent)  # the same form again, after the withdrawal
    assert r.status_code == 409
    assert "withdrew consent" in r.get_data(as_text=True) and "enrol anew at the door" in r.get_data(as_text=True)
    page = staff.get(url).get_data(as_text=True)
    assert "Record consent" not in page and 'action="/customers/' + cid + '/consent"' not in page
    assert "enrol anew at the door" in page
    with db.sessions() as s:
        customer = s.get(Customer, cid)
        assert (customer.status, customer.consent_at, customer.display_name) == ("withdrawn", None, None)
        assert s.scalars(select(AuditEntry.action).where(AuditEntry.customer_id == cid)
                         .order_by(AuditEntry.id)).all() == ["consent-recorded", "consent-withdrawn"]
    assert "recognised at the door" not in staff.get(url).get_data(as_text=True)


@pytest.mark.slow
def test_the_consent_card_of_a_withdrawn_customer_has_no_form_in_the_browser(browser, tmp_path):
    from dangol_cloud.web.customers import withdraw_consent

    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    cid = _two_stores(db)["visited"]
    with db.transaction() as s:
        customer = s.get(Customer, cid)
        customer.consent_by, customer.consent_at, customer.consent_text_version = "staff:jo", customer.created_at, "1"
        withdraw_consent(s, customer, actor="staff:jo")
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="browser-scope", _env_file=None)
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        base = f"http://127.0.0.1:{server.server_port}"
        page.goto(base + "/login")
        page.fill("input[name=email]", STAFF_EMAIL)
        page.fill("input[name=password]", STAFF_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        page.goto(f"{base}/customers/{cid}")
        assert page.inner_text("#summary").startswith("consent withdrawn")
        assert page.locator("button:has-text('Record consent')").count() == 0
        assert page.locator("input[name=display_name]").count() == 0
        assert "enrol anew at the door" in page.inner_text("#consent-withdrawn")
    finally:
        context.close()
        server.shutdown()
        thread.join(5)
        db.dispose()


# --- 3. the item page ----------------------------------------------------------------------------------------
def _numbers(page: str) -> dict[str, str]:
    card = re.search(r'id="item-numbers">(.*?)</table>', page, re.S).group(1)
    return {re.sub(r"\s*\(.*", "", label): value for label, value in
            re.findall(r'<tr><td>([^<]*)</td><td class="num">([^<]*)</td></tr>', card)}


def test_staff_see_only_their_stores_sales_of_an_item(web, ta_feng_slice):  # noqa: F811
    app, db = web
    got = _shared_regular(db, ta_feng_slice)
    sold_at_b = got["at_b"][0]
    item_url = f"/catalogue/{got['items'][sold_at_b.item_ref]}/about"
    units_b = sum(r.quantity for r in got["at_b"] if r.item_ref == sold_at_b.item_ref)
    with db.transaction() as s:  # the owner puts each product on the menu; store B's customer has it in their picks
        map_products(s, list(got["items"].values()), "self", by=OWNER_EMAIL)
        s.add(ModelVersion(version="m1", path="x"))
        s.flush()
        s.add(Menu(customer_id=got["bought"], model_version="m1",
                   picks=[{"item_id": got["items"][sold_at_b.item_ref], "score": 1, "reasons": []}]))
    owner_page = _client(app).get(item_url).get_data(as_text=True)
    numbers = _numbers(owner_page)
    assert numbers["Units sold"] == f"{units_b:,.0f}" and numbers["Door visits that showed it"] == "1", numbers
    assert numbers["Regulars with it among their current picks"] == "1", numbers
    assert numbers["Bought after being shown"] != "0" and "No sales yet" not in owner_page, numbers
    staff_page = _client(app, STAFF_EMAIL, STAFF_PASSWORD).get(item_url).get_data(as_text=True)
    numbers = _numbers(staff_page)
    assert numbers["Units sold"] == "0", numbers
    assert numbers["Door visits that showed it"] == "0" and numbers["Bought after being shown"] == "0", numbers
    assert numbers["Regulars with it among their current picks"] == "0", numbers
    assert "No sales yet" in staff_page                                    # the weekly chart: none at store A
    sold_at_a = got["at_a"][0]                                             # their own store's sales still count
    numbers = _numbers(_client(app, STAFF_EMAIL, STAFF_PASSWORD)
                       .get(f"/catalogue/{got['items'][sold_at_a.item_ref]}/about").get_data(as_text=True))
    assert numbers["Units sold"] == f"{sum(r.quantity for r in got['at_a'] if r.item_ref == sold_at_a.item_ref):,.0f}"
    assert numbers["Door visits that showed it"] == "1" and numbers["Bought after being shown"] != "0", numbers
