"""First-hour walls a reviewer hit in the dashboard, each replayed in headless Chromium (real Ta-Feng purchases
where purchase rows are needed):

1. an item named in Korean gets a readable POS code the till can send (and the owner sees and sets it);
2. the catalogue's price column is headed in the stores' currency, and says which stores differ;
3. consent recorded on a history-only customer does not claim recognition, and their door sign-up can still be
   linked to that history;
4. a price error keeps the attached photo; "New POS token" asks first; analytics presets keep the store; the
   Users form keeps its input and warns about a staff user without a store; at 375 px every page fits the phone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import (AuditEntry, CatalogueItem, Customer, Device, Erasure, Purchase, Store,
                                 StoreSetting, User)
from dangol_cloud.settings import Settings

from .conftest import (DEV_KEY_BYTES, STORE_TOKEN, add_owner, add_store_and_device, screenshot_page, serving,
                       sign_in_owner)

pytestmark = pytest.mark.slow
TIMEOUT_MS = 20_000


@pytest.fixture
def site(tmp_path):
    """The dashboard on a fresh SQLite database with the owner and one store ("Main Street", POS token
    :data:`STORE_TOKEN`) with a door device, served for the browser."""
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, device_id = add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="walls", timezone="Asia/Taipei",
                        _env_file=None)
    with serving(create_app(settings, db=db)) as base:
        yield SimpleNamespace(base=base, db=db, store=store_id, device=device_id, tmp=tmp_path)
    db.dispose()


def _page(browser, site, name, **context):
    """A signed-in owner page (1280×900, or a new context with ``context``, e.g. a phone's) and its screenshot
    folder."""
    folder, page = screenshot_page(browser, site.tmp, name, TIMEOUT_MS)
    if context:
        page.context.close()
        page = browser.new_context(**context).new_page()
        page.set_default_timeout(TIMEOUT_MS)
    sign_in_owner(page, site.base)
    return folder, page


def _flashes(page) -> str:
    return " ".join(page.locator(".flash").all_inner_texts())


def _sale(base: str, item: str, token: str = STORE_TOKEN):
    """POST one POS sale of ``item``; the HTTP status, and the problem detail on an error."""
    body = {"customer": "loyalty-1", "ts": "2001-01-05T08:31:00+08:00",
            "lines": [{"item": item, "quantity": 1, "amount": 85}]}
    request = urllib.request.Request(base + "/api/v1/purchases", method="POST", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                              "Idempotency-Key": uuid.uuid4().hex})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["detail"]


def _import_ta_feng(db, path, store_id):
    """The real Ta-Feng rows of ``path`` imported into ``store_id`` (history customers, POS products)."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    with db.transaction() as s:
        report = import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                             tz="Asia/Taipei", store_id=store_id)
    assert report.inserted > 0


def _add_item(page, base, name, price="85", **fields):
    page.goto(base + "/catalogue/new")
    page.fill("input[name=name]", name)
    page.fill("input[name=price]", price)
    for field, value in fields.items():
        page.fill(f"input[name={field}]", value)
    with page.expect_navigation():  # the POST and the page it leads to (the flash or the form with its errors)
        page.click("button:has-text('Add item')")


def _item(db, name) -> CatalogueItem:
    with db.sessions() as s:
        return s.scalar(select(CatalogueItem).where(CatalogueItem.name == name))


def _errors(page) -> str:
    return " ".join(page.locator(".err").all_inner_texts())


# --- 1. POS codes ---------------------------------------------------------------------------------------------
def test_an_item_named_in_korean_gets_a_pos_code_the_till_can_send(browser, site):
    folder, page = _page(browser, site, "pos-codes")
    base = site.base
    for name in ("아메리카노", "카페라떼", "Flat White"):
        _add_item(page, base, name, price="4500")
        assert "Added" in _flashes(page)
    codes = {name: _item(site.db, name).ref for name in ("아메리카노", "카페라떼", "Flat White")}
    assert codes == {"아메리카노": "아메리카노", "카페라떼": "카페라떼", "Flat White": "flat-white"}
    americano, latte = _item(site.db, "아메리카노"), _item(site.db, "카페라떼")

    # the item page and the edit form show the code the till sends
    page.goto(f"{base}/catalogue/{americano.id}/about")
    assert "아메리카노" in page.inner_text("#pos-code")
    page.screenshot(path=str(folder / "item-page.png"))
    page.goto(f"{base}/catalogue/{americano.id}")
    assert page.input_value("input[name=ref]") == "아메리카노"
    assert "POS code" in page.inner_text("label[for=ref]")
    for item in ("아메리카노", "카페라떼", "flat-white"):  # Latin names keep the codes they always had
        assert _sale(base, item) == 201, item

    # the owner sets a code of their till's own
    page.goto(f"{base}/catalogue/{latte.id}")
    page.fill("input[name=ref]", "latte")
    page.click("button:has-text('Save')")
    assert "Saved" in _flashes(page)
    assert _item(site.db, "카페라떼").ref == "latte" and _sale(base, "latte") == 201
    assert _sale(base, "카페라떼")[0] == 422

    # a code already used, or one the POS API would refuse, is refused naming the field; nothing changes
    flat = _item(site.db, "Flat White")
    for bad, says in (("latte", "already"), ("x" * 65, "64"), (americano.id, "already")):
        page.goto(f"{base}/catalogue/{flat.id}")
        page.fill("input[name=ref]", bad)
        page.fill("input[name=price]", "4600")
        page.click("button:has-text('Save')")
        assert "POS code" in _errors(page) and says in _errors(page), (bad, _errors(page))
        with site.db.sessions() as s:
            assert (s.get(CatalogueItem, flat.id).ref, s.get(CatalogueItem, flat.id).price) == ("flat-white", 4500)
    page.screenshot(path=str(folder / "code-refused.png"))

    # an item stored with an old-style code keeps it through an edit that does not touch the code
    with site.db.transaction() as s:
        s.add(CatalogueItem(ref="item", name="녹차", price=4000, tags=[]))
    old = _item(site.db, "녹차")
    page.goto(f"{base}/catalogue/{old.id}")
    assert page.input_value("input[name=ref]") == "item"
    page.fill("input[name=price]", "4200")
    page.click("button:has-text('Save')")
    assert "Saved" in _flashes(page)
    assert (_item(site.db, "녹차").ref, _item(site.db, "녹차").price) == ("item", 4200)
    assert _sale(base, "item") == 201
    page.context.close()


# --- 2. currency ----------------------------------------------------------------------------------------------
def test_catalogue_prices_are_headed_in_the_stores_currency(browser, site):
    with site.db.transaction() as s:
        s.add(StoreSetting(store_id=site.store, currency="TWD"))
    folder, page = _page(browser, site, "currency")
    base = site.base
    page.goto(base + "/catalogue/new")
    assert "TWD" in page.inner_text("label[for=price]")
    _add_item(page, base, "Iced Americano", price="85")
    assert "Price (TWD)" in page.text_content("#items th.num")
    assert page.locator("#currency-note").count() == 0
    page.goto(f"{base}/catalogue/{_item(site.db, 'Iced Americano').id}/about")
    assert "NT$85.00" in page.inner_text(".sub")  # the door's rule (dangol_protocol.money), not "85.00 TWD"

    with site.db.transaction() as s:  # a second store, selling in US dollars
        harbour = Store(name="Harbour", ref="hb")
        s.add(harbour)
        s.flush()
        s.add(StoreSetting(store_id=harbour.id, currency="USD"))
    page.goto(base + "/catalogue/")
    # the catalogue's prices stay in New Taiwan dollars (stored once: a new store does not change them), and the
    # note names the store that sells in another currency
    assert "Price (TWD)" in page.text_content("#items th.num")
    note = page.inner_text("#currency-note")
    assert all(word in note for word in ("TWD", "Harbour", "USD")) and "Main Street" not in note, note
    page.screenshot(path=str(folder / "catalogue-two-currencies.png"), full_page=True)
    page.context.close()


# --- 3. consent on a history customer, then the door sign-up linked ---------------------------------------------
def test_consent_on_a_history_customer_is_not_recognition_and_the_door_signup_links(browser, site, ta_feng_slice):
    _import_ta_feng(site.db, ta_feng_slice, site.store)
    with site.db.sessions() as s:
        loyalty = s.scalar(select(Customer).where(Customer.source == "import").order_by(Customer.id).limit(1))
        loyalty_id, number = loyalty.id, loyalty.external_ref
        lines = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == loyalty_id))
    folder, page = _page(browser, site, "consent-link")
    base = site.base
    page.goto(f"{base}/customers/{loyalty_id}")
    card = page.inner_text("#consent-card")
    assert "activates recognition" not in card and "not enrolled at any door" in card, card
    page.fill("input[name=display_name]", "민지")
    with page.expect_navigation():  # the form's POST and its redirect: read the page it lands on
        page.click("button:has-text('Record consent')")
    summary = page.inner_text("#summary")
    assert "recognised at the door" not in summary and "not enrolled at any door yet" in summary, summary
    assert "now active" not in _flashes(page) and "not enrolled at any door" in _flashes(page)
    page.screenshot(path=str(folder / "history-customer-consent.png"))
    page.goto(base + "/customers/")
    row = page.locator("tr", has_text="민지").inner_text()
    assert "recognised" not in row and "not at a door" in row, row

    # the same person signs up at the front door (the device's enrolment event, as the listener applies it)
    from dangol_cloud.device_events import apply_event

    now = datetime.now(timezone.utc)
    event = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(site.device), ts=now,
                                 customer_id=uuid.uuid4(), status="active", display_name="Minji",
                                 consent=proto.Consent(recorded_by="barista", recorded_at=now, text_version="2026-01"))
    with site.db.transaction() as s:
        apply_event(s, s.get(Device, site.device), event, now)
    door_id = str(event.customer_id)
    page.goto(f"{base}/customers/{door_id}")
    assert "recognised at the door" in page.inner_text("#summary")
    page.fill("#loyalty", number)
    page.click("#link")
    assert "recorded on the dashboard" in page.inner_text("#confirm")  # says that consent record is replaced
    with page.expect_navigation():
        page.click("#confirm-button")
    assert "Linked" in _flashes(page), _flashes(page)
    assert f"{lines:,} purchase lines" in page.inner_text("#summary")
    page.screenshot(path=str(folder / "linked.png"))
    with site.db.sessions() as s:
        assert s.get(Customer, loyalty_id) is None
        door = s.get(Customer, door_id)
        assert (door.display_name, door.consent_by, door.source, door.external_ref) == ("Minji", "barista", "edge",
                                                                                        number)
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == door_id)) == lines
        actions = s.scalars(select(AuditEntry.action).where(AuditEntry.customer_id.in_([loyalty_id, door_id]))
                            .order_by(AuditEntry.id)).all()
        assert actions == ["consent-recorded", "consent-recorded", "customers-linked"], actions
        linked = s.scalar(select(AuditEntry).where(AuditEntry.action == "customers-linked"))
        assert loyalty_id in linked.detail and "consent" in linked.detail and "민지" not in linked.detail
        # the history record's menu (sent to the stores with its consent) is cleared everywhere
        assert s.scalar(select(Erasure).where(Erasure.customer_id == loyalty_id)) is not None

    # two door enrolments are still never merged
    from dangol_cloud.web.customer_link import LinkError, link_customers

    other = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(site.device), ts=now,
                                 customer_id=uuid.uuid4(), status="active", display_name="Jun",
                                 consent=proto.Consent(recorded_by="barista", recorded_at=now, text_version="2026-01"))
    with site.db.transaction() as s:
        apply_event(s, s.get(Device, site.device), other, now)
    with site.db.sessions() as s:
        with pytest.raises(LinkError, match="enrolled at the door"):
            link_customers(s, s.get(Customer, door_id), s.get(Customer, str(other.customer_id)), actor="owner")
        s.rollback()
    page.context.close()


# --- 4. smaller walls ---------------------------------------------------------------------------------------------
def test_a_price_error_keeps_the_attached_photo(browser, site, data_dir):
    photo = data_dir / "clips" / "face_recognition_examples" / "obama-720p.jpg"  # a real JPEG for a menu photo
    folder, page = _page(browser, site, "photo-kept")
    base = site.base
    page.goto(base + "/catalogue/new")
    page.fill("input[name=name]", "Iced Americano")
    page.fill("input[name=price]", "45000000")  # one zero too many
    page.set_input_files("input[name=photo]", str(photo))
    page.click("button:has-text('Add item')")
    assert "price" in _errors(page).lower()
    assert page.locator("#held-photo img").is_visible()
    assert "kept" in page.inner_text("#held-photo")
    page.screenshot(path=str(folder / "error-keeps-photo.png"))
    page.fill("input[name=price]", "85")
    page.click("button:has-text('Add item')")
    assert "Added" in _flashes(page)
    item = _item(site.db, "Iced Americano")
    assert item.photo and (site.tmp / "home" / "photos" / item.photo).is_file()
    assert page.locator("#items img.thumb").count() == 1
    page.context.close()


def test_a_new_pos_token_is_asked_for_before_the_till_is_cut_off(browser, site):
    with site.db.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=85, tags=[]))
    folder, page = _page(browser, site, "pos-token")
    base = site.base
    page.goto(base + "/stores/")
    page.click("button:has-text('New POS token')")
    assert "POS token" in page.inner_text("#confirm h1") and "stops working" in page.inner_text("#confirm")
    page.screenshot(path=str(folder / "confirm.png"))
    assert _sale(base, "americano") == 201  # asking changed nothing
    page.click("#confirm-cancel")
    page.wait_for_url(base + "/stores/")
    assert _sale(base, "americano") == 201
    page.click("button:has-text('New POS token')")
    page.click("#confirm-button")
    token = page.inner_text("#token").strip()
    assert _sale(base, "americano")[0] == 401 and _sale(base, "americano", token) == 201
    page.context.close()


def test_analytics_presets_keep_the_chosen_store(browser, site, ta_feng_slice):
    _import_ta_feng(site.db, ta_feng_slice, site.store)
    folder, page = _page(browser, site, "analytics-store")
    base = site.base
    page.goto(base + "/analytics/?all=1")
    page.select_option("select[name=store]", label="Main Street")
    page.click("button:has-text('Show')")
    page.wait_for_url(f"**store={site.store}**")
    for preset in ("#all-history", ".tabs a:has-text('30 days')"):
        page.click(preset)
        page.wait_for_load_state()
        assert f"store={site.store}" in page.url, page.url
        assert page.locator("select[name=store]").input_value() == site.store
    page.screenshot(path=str(folder / "preset-keeps-store.png"))
    page.context.close()


def test_users_form_keeps_input_and_warns_about_a_staff_user_without_a_store(browser, site):
    folder, page = _page(browser, site, "users")
    base = site.base
    form = "#add-user"
    page.goto(base + "/users/")
    page.fill(f"{form} input[name=email]", "barista@cafe")  # no top-level domain
    page.select_option(f"{form} select[name=role]", "staff")
    page.check(f"{form} input[name=stores]")
    page.click("button:has-text('Add user')")
    assert "e-mail" in page.inner_text(".flash.error")
    assert page.input_value(f"{form} input[name=email]") == "barista@cafe"
    assert page.is_checked(f"{form} input[name=stores]")
    page.screenshot(path=str(folder / "bad-email-kept.png"))

    page.fill(f"{form} input[name=email]", "barista@cafe.example")
    page.uncheck(f"{form} input[name=stores]")
    page.click("button:has-text('Add user')")
    assert "no store" in page.inner_text("#no-store-warning")
    password = page.inner_text("#new-password").strip()
    page.click("text=Done")
    assert "no store" in page.locator("#users tr", has_text="barista@cafe.example").inner_text()

    staff = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    staff.goto(base + "/login")
    staff.fill("input[name=email]", "barista@cafe.example")
    staff.fill("input[name=password]", password)
    staff.click("button[type=submit]")
    staff.wait_for_url(base + "/")
    staff.goto(base + "/customers/")
    assert "not linked to any store" in staff.inner_text("#no-stores")
    staff.context.close()

    # an owner giving the staff role without a store is told too
    with site.db.sessions() as s:
        barista = s.scalar(select(User).where(User.email == "barista@cafe.example"))
    row = page.locator("#users tr", has_text="barista@cafe.example")
    row.locator("input[name=stores]").check()
    row.locator("button:has-text('Save')").click()
    assert "no store" not in page.locator("#users tr", has_text="barista@cafe.example").inner_text()
    row = page.locator("#users tr", has_text="barista@cafe.example")
    row.locator("input[name=stores]").uncheck()
    row.locator("button:has-text('Save')").click()
    assert "no store" in " ".join(page.locator(".flash.warning").all_inner_texts())
    with site.db.sessions() as s:
        assert s.get(User, barista.id).role == "staff"
    page.context.close()


def test_every_page_fits_a_phone(browser, site, ta_feng_slice):
    from dangol_cloud.menu_mapping import map_products
    from dangol_cloud.models_ops import ProductMapping

    _import_ta_feng(site.db, ta_feng_slice, site.store)
    with site.db.transaction() as s:
        map_products(s, list(s.scalars(select(ProductMapping.product_id).limit(40))), "self", by="test")
        customer = s.scalar(select(Purchase.customer_id).limit(1))
        item = s.scalar(select(CatalogueItem.id).order_by(CatalogueItem.name).limit(1))
    folder, page = _page(browser, site, "phone", viewport={"width": 375, "height": 740}, is_mobile=True,
                         has_touch=True)
    wide = {}
    for path in ("/", "/catalogue/", "/catalogue/products", "/customers/?show=all", f"/customers/{customer}",
                 f"/catalogue/{item}/about", f"/catalogue/{item}", "/purchases/", "/stores/", "/analytics/?all=1",
                 "/users/", "/privacy/"):
        page.goto(site.base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(folder / f"{path.strip('/').replace('/', '_').replace('?', '_') or 'home'}.png"))
        if width > 375:
            wide[path] = width
    assert not wide, wide
    page.goto(site.base + "/stores/")
    for button in ("New password", "Remove", "New POS token"):  # on screen without scrolling sideways
        box = page.locator(f"button:has-text('{button}')").first.bounding_box()
        assert box and 0 <= box["x"] and box["x"] + box["width"] <= 375, (button, box)
    page.context.close()


def test_held_photos_of_abandoned_forms_are_pruned_after_a_day(tmp_path, data_dir):
    """A form left after its photo was held leaves a file in ``photos/held``; a later hold deletes those older than
    a day (so the folder cannot grow for good) and keeps the recent ones."""
    import os
    import time

    from dangol_cloud.web.catalogue_form import HELD_MAX_AGE_S, _prune_held

    folder = tmp_path / "held"
    folder.mkdir()
    photo = next(iter(sorted((data_dir / "faces").rglob("*.jpg"))))  # a real JPEG's bytes
    old, recent = folder / f"{uuid.uuid4().hex}.jpg", folder / f"{uuid.uuid4().hex}.jpg"
    for path in (old, recent):
        path.write_bytes(photo.read_bytes())
    now = time.time()
    os.utime(old, (now - HELD_MAX_AGE_S - 60, now - HELD_MAX_AGE_S - 60))
    assert _prune_held(folder, now) == 1
    assert not old.exists() and recent.exists()
