"""Owner dashboard in headless Chromium (Debian's /usr/bin/chromium via Playwright, never downloaded):
sign in, add an item, publish (a real Mosquitto receives it), upload a CSV with a bad row, view picks.

Set DANGOL_SCREENSHOTS=DIR to keep full-page screenshots of every page visited.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from werkzeug.serving import make_server

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import CatalogueItem, Customer, ProductMapping, Purchase, Visit
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker, free_port
from tests.browser import chromium_missing

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device, utc, write_ta_feng_customers


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory, data_dir):
    """A live dashboard (SQLite, real Mosquitto, a model trained on real Ta-Feng customers) on a free port."""
    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    tmp = tmp_path_factory.mktemp("site")
    url = f"sqlite:///{tmp / 'cloud.sqlite'}"
    broker = MosquittoBroker(tmp / "mosquitto").start()
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, device_id = add_store_and_device(db)
    # real purchase history of ~130 Ta-Feng customers, trained with the real recommender
    slice_ = write_ta_feng_customers(data_dir, tmp / "ta_feng_00.csv")
    env = {"DANGOL_DATABASE_URL": url, "DANGOL_CLOUD_HOME": str(tmp / "home")}
    old = {k: os.environ.get(k) for k in (*env, "DANGOL_MQTT_URL")}
    os.environ.update(env)
    os.environ.pop("DANGOL_MQTT_URL", None)
    try:
        assert cli(["import-purchases", str(slice_), "--format", "ta-feng", "--no-progress", "--train"]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    with db.transaction() as s:  # the owner chose "one menu item per product" for the imported products
        map_products(s, list(s.scalars(select(ProductMapping.product_id))), "self", by=OWNER_EMAIL)
    with db.transaction() as s:  # one imported regular enrols at the door and gives consent
        regular = s.scalar(select(Customer).join(Purchase).group_by(Customer.id)
                           .order_by(func.count().desc()).limit(1))
        regular.display_name, regular.source = "Mina Park", "edge"
        regular.consent_by, regular.consent_at, regular.consent_text_version = "staff:jo", utc(2026, 1, 2), "2026-01"
        for hour in (8, 8, 9, 13, 17):
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=regular.id, device_id=device_id, store_id=store_id,
                        ts=utc(2026, 1, 2 + hour % 5, hour), confidence=0.9))
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=None, device_id=device_id, store_id=store_id,
                    ts=utc(2026, 1, 3, 10)))
        regular_id = regular.id
    settings = Settings(cloud_home=tmp / "home", database_url=url, mqtt_url=broker.url, secret_key="browser-test",
                        _env_file=None)
    app = create_app(settings, db=db)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{port}", "db": db, "broker": broker, "store": store_id, "regular": regular_id}
    server.shutdown()
    thread.join(5)
    db.dispose()
    broker.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def shot(page, name: str) -> None:
    folder = os.environ.get("DANGOL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def sign_in(page, site, password=OWNER_PASSWORD):
    page.goto(site["base"] + "/login")
    page.fill("input[name=email]", OWNER_EMAIL)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_wrong_password_is_refused(page, site):
    sign_in(page, site, password="not the password")
    assert "Wrong e-mail or password" in page.inner_text("body")
    assert page.url.startswith(site["base"] + "/login")
    shot(page, "01-login-refused")


def test_sign_in_add_item_and_publish(page, site):
    sign_in(page, site)
    page.wait_for_url(site["base"] + "/")
    assert "Good to see you" in page.inner_text("h1")
    shot(page, "02-today")
    page.click("text=Menu catalogue")
    page.click("text=+ Add item")
    page.fill("input[name=name]", "Yuja honey tea")
    page.fill("input[name=category]", "Tea")
    page.fill("input[name=price]", "4.20")
    page.fill("textarea[name=description]", "Citron tea with honey, served hot.")
    page.fill("input[name=tags]", "hot, caffeine-free")
    shot(page, "03-new-item")
    page.click("button:has-text('Add item')")
    assert "Added “Yuja honey tea”" in page.inner_text(".flash")
    page.click("#publish")
    flash = page.inner_text(".flash")
    assert "Published catalogue version 1" in flash and "1 store" in flash
    shot(page, "04-catalogue-published")
    # the store's retained catalogue now holds the new item
    got = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(proto.parse_payload(m.topic, m.payload))
    client.connect(site["broker"].host, site["broker"].port)
    client.loop_start()
    client.subscribe(proto.catalogue_topic(site["store"]), qos=1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    assert got and "Yuja honey tea" in {i.name for i in got[0].items}
    tea = next(i for i in got[0].items if i.name == "Yuja honey tea")
    assert tea.price == 4.2 and tea.tags == ["hot", "caffeine-free"]


def test_upload_csv_with_a_bad_row_shows_the_report(page, site, tmp_path):
    csv = tmp_path / "till-2026-01-05.csv"
    csv.write_text("customer,item,quantity,timestamp,amount\n"
                   "walk-in-7,Yuja honey tea,1,2026-01-05T08:10:00,4.2\n"
                   "walk-in-8,Yuja honey tea,one,2026-01-05T08:12:00,4.2\n"
                   "walk-in-9,Yuja honey tea,2,2026-01-05T08:15:00,8.4\n")
    with site["db"].sessions() as s:
        before = s.scalar(select(func.count()).select_from(Purchase))
    sign_in(page, site)
    page.goto(site["base"] + "/purchases/")
    page.set_input_files("input[name=file]", str(csv))
    page.click("#upload")
    page.wait_for_selector("#job[data-state=done]")  # the import runs in the background; the page refreshes
    report = page.inner_text("#report")
    assert "2 imported" in report and "1 skipped" in report
    row = page.inner_text("#row-errors tr:nth-child(2)")
    assert row.split()[0] == "3" and "quantity" in row and "one" in row
    shot(page, "05-upload-report")
    with site["db"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == before + 2


def test_view_a_customers_picks(page, site):
    sign_in(page, site)
    page.goto(site["base"] + "/customers/")
    shot(page, "06-customers")
    page.click("text=Mina Park")
    picks = page.locator("#picks li")
    picks.first.wait_for()  # the click navigates: count once her page is there
    assert picks.count() == 10
    first = picks.first.inner_text()
    assert first.strip() and page.locator("#picks li .why span").count() >= 10  # every pick says why
    assert "Recorded by" in page.inner_text("body") and "staff:jo" in page.inner_text("body")
    shot(page, "07-customer-picks")
    page.goto(site["base"] + "/analytics/?all=1")  # the imported history and the door arrivals
    assert page.locator("svg.chart").count() >= 6  # trends, revenue, heatmap, hour, weekday, top items, split
    shot(page, "08-analytics")
    page.goto(site["base"] + "/stores/")
    shot(page, "09-stores")


def test_stores_and_today_pages_flag_a_device_in_trouble(page, site):
    """A door device that reports a full disk, failing recognition, a long outbox and an unreadable menu cache:
    the owner sees each problem on the Stores page and on Today, not just numbers."""
    from dangol_cloud.models import Device

    health = proto.Health(camera="ok", fps=0.0, gallery_size=4, queue_depth=250, storage="full",
                          frames_captured=400, frames_dropped=120, recognition="failing",
                          catalogue="unreadable").model_dump(mode="json")
    with site["db"].transaction() as s:
        device = s.scalars(select(Device).where(Device.store_id == site["store"])).first()
        before = device.state, device.health
        device.state, device.health = "online", health
    try:
        sign_in(page, site)
        page.wait_for_url(site["base"] + "/")
        for url in ("/stores/", "/"):
            page.goto(site["base"] + url)
            pills = page.locator("[data-health-warning]").all_inner_texts()
            assert pills == ["storage full — events are held on the device", "recognition failing",
                             "cached menu unreadable — publish the menu again", "250 events waiting to be sent"], url
            assert page.locator("[data-health-warning].bad").count() == 2
            shot(page, "10-device-trouble" + url.replace("/", "-").rstrip("-"))
    finally:
        with site["db"].transaction() as s:
            device = s.scalars(select(Device).where(Device.store_id == site["store"])).first()
            device.state, device.health = before


def test_form_without_csrf_token_is_refused(page, site):
    sign_in(page, site)
    page.wait_for_url(site["base"] + "/")
    with site["db"].sessions() as s:
        before = s.scalar(select(func.count()).select_from(CatalogueItem))
    response = page.request.post(site["base"] + "/catalogue/new", form={"name": "Forged latte", "price": "1"})
    assert response.status == 400
    with site["db"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueItem)) == before


def test_recording_consent_sends_the_new_regulars_picks(page, site):
    with site["db"].transaction() as s:
        newcomer = Customer(status="pending", source="edge")
        s.add(newcomer)
        s.flush()
        cid = newcomer.id
    sign_in(page, site)
    page.goto(site["base"] + f"/customers/{cid}")
    page.fill("input[name=display_name]", "Jun")
    page.fill("input[name=recorded_by]", "staff:jo")
    page.click("button:has-text('Record consent')")
    assert "Jun's picks were sent to the stores" in page.inner_text("body")
    assert page.locator("#picks li").count() == 10          # cold-start list from the trained model
    got = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(proto.parse_payload(m.topic, m.payload))
    client.connect(site["broker"].host, site["broker"].port)
    client.loop_start()
    client.subscribe(proto.menu_topic(site["store"], cid), qos=1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    assert got and got[0].display_name == "Jun" and len(got[0].items) == 10


def test_owner_erases_a_customer_and_sees_it_in_the_audit_log(page, site):
    cid = str(uuid.uuid4())
    with site["db"].transaction() as s:
        s.add(Customer(id=cid, display_name="Erin Erasable", status="active", source="edge", consent_by="staff:jo",
                       consent_at=utc(2026, 1, 2), consent_text_version="2026-01"))
    sign_in(page, site)
    page.wait_for_url(site["base"] + "/")
    page.goto(f"{site['base']}/customers/{cid}")
    page.click("#erase")
    page.fill("#confirm-phrase", "ERASE")  # the confirmation step
    page.click("#confirm-button")
    assert "Erased Erin Erasable" in page.inner_text("body")
    page.click("text=Privacy")
    assert "erasure-requested" in page.inner_text("#audit-log") and cid in page.inner_text("#audit-log")
    assert "Front door" in page.inner_text("#pending-erasures")  # sent, waiting for the device to confirm
    assert "Erasable" not in page.inner_text("body")
    shot(page, "08-privacy")
    with site["db"].sessions() as s:
        assert s.get(Customer, cid) is None
