"""Issue 11, "done when": the owner's first hour, end to end in headless Chromium on real data — sign in,
upload Ta-Feng and Complete Journey (three files at once) with progress, map products to a menu, publish (a
real Mosquitto receives a small, readable catalogue), the door screen at 800×480 and 1920×1080, a customer's
page, consent recorded and withdrawn, erasure with its confirmation, analytics over the imported range and a
CSV export. Screenshots of every step go to ``$DANGOL_SCREENSHOTS/first-hour`` (or the test's tmp folder)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from werkzeug.serving import make_server

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.models import Store, StoreSetting
from dangol_cloud.settings import Settings
from dangol_edge.web.formatting import format_price
from tests.broker import free_port

from .conftest import owner_database, sign_in_owner, write_ta_feng_customers
from .test_owner_door_screen import Daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path, data_dir):
    broker, url, db, store_id = owner_database(tmp_path)
    with db.transaction() as s:  # Ta-Feng's sales were in a Taipei store, in New Taiwan dollars
        taipei = Store(name="Taipei", ref="tpe")
        s.add(taipei)
        s.flush()
        s.add(StoreSetting(store_id=taipei.id, currency="TWD"))
        taipei_id = taipei.id
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, mqtt_url=broker.url, secret_key="first-hour",
                        timezone="Asia/Taipei", _env_file=None)
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "db": db, "broker": broker, "store": store_id,
           "taipei": taipei_id}
    server.shutdown()
    thread.join(5)
    db.dispose()
    broker.stop()


@pytest.fixture
def files(data_dir, tmp_path):
    """Real slices: Ta-Feng customers whose id ends in 00; the first 3,000 Complete Journey transactions with
    the real products.csv and demographics.csv."""
    ta = write_ta_feng_customers(data_dir, tmp_path / "ta_feng_00.csv")
    cj_dir = data_dir / "purchases" / "completejourney"
    cj = tmp_path / "transactions.csv"
    with (cj_dir / "transactions.csv").open() as fin, cj.open("w") as fout:
        for n, line in enumerate(fin):
            if n > 3000:
                break
            fout.write(line)
    return {"ta-feng": ta, "cj": [cj, cj_dir / "products.csv", cj_dir / "demographics.csv"],
            "photo": data_dir / "clips" / "face_recognition_examples" / "obama-720p.jpg"}


def _retained(broker, topic: str):
    got = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(proto.parse_payload(m.topic, m.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return got[0] if got else None


def test_the_owners_first_hour(browser, site, files, tmp_path):
    folder = Path(os.environ.get("DANGOL_SCREENSHOTS") or tmp_path) / "first-hour"
    folder.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1920, "height": 1080}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    n = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=str(folder / f"{next(n):02d}-{name}.png"), full_page=True)

    base = site["base"]
    sign_in_owner(page, base)
    shot("today")
    page.goto(base + "/stores/")  # the Main Street store sells in US dollars (Complete Journey is American)
    page.fill(f"#cur-{site['store']}", "usd")
    page.click(f"form:has(#cur-{site['store']}) button")
    assert "amounts are shown in USD" in page.inner_text(".flash")

    # 1. upload Ta-Feng (one file), then Complete Journey (three files at once, format detected)
    for label, chosen, store in (("ta-feng", [files["ta-feng"]], site["taipei"]),
                                 ("completejourney", files["cj"], site["store"])):
        page.goto(base + "/purchases/")
        page.set_input_files("input[name=file]", [str(p) for p in chosen])
        page.select_option("select[name=store]", store)
        page.click("#upload")
        page.wait_for_url(re.compile(r".*/purchases/imports/\w+"))
        assert page.locator("#job-progress").count() == 1 and "rows/s" in page.inner_text("#job-numbers")
        shot(f"import-{label}-progress")
        page.wait_for_selector("#job[data-state=done]")
        assert "not on the menu" in page.inner_text("#report") and label in page.inner_text(".sub")
        shot(f"import-{label}-result")

    # 2. the menu is untouched; map the bread products (real Complete Journey names) one menu item each
    page.click("text=Menu catalogue")
    assert "not on the menu" in page.inner_text("#unmapped-note") and page.locator("#items").count() == 0
    shot("catalogue-after-import")
    page.goto(base + "/catalogue/products")
    assert "no product names" in page.inner_text(".codes-note")  # Ta-Feng codes: said, not invented
    shot("products")
    page.fill("input[name=q]", "bread")
    page.click("button:has-text('Search')")
    page.check("#scope-all")
    page.click("#op-self")
    shot("map-confirm")
    page.click("#confirm-button")
    assert "are now menu items" in page.inner_text(".flash")
    page.goto(base + "/catalogue/")
    page.fill("#per-category", "6")
    page.click("#save-house")
    shot("menu-mapped")
    page.locator("#items tr").nth(1).locator("a").first.click()  # the first menu item's page
    page.click("text=Edit")
    page.set_input_files("input[name=photo]", str(files["photo"]))  # a real JPEG (any: the point is the path)
    page.click("button:has-text('Save')")
    assert "Saved" in page.inner_text(".flash")

    # 3. publish: the store's retained catalogue is small and readable
    page.click("#publish")
    assert "Published catalogue version 1" in page.inner_text(".flash")
    catalogue = _retained(site["broker"], proto.catalogue_topic(site["store"]))
    names = [i.name for i in catalogue.items]
    assert catalogue.currency == "USD"
    assert 0 < len(names) <= 6 * len({i.category for i in catalogue.items})
    assert all(not name.isdigit() for name in names) and all("BREAD" in name.upper() or "BUN" in name.upper()
                                                            or "ROLL" in name.upper() for name in names)
    photos = {str(i.id): i.photo_url for i in catalogue.items if i.photo_url}
    assert len(photos) == 1 and next(iter(photos.values())).startswith("data:image/jpeg;base64,")

    # 4. the door screen with that catalogue, at both sizes
    groups: dict[str, list] = {}
    for item in catalogue.items:
        groups.setdefault(item.category or "More", []).append(
            {"id": str(item.id), "name": item.name, "price": format_price(item.price, catalogue.currency),
             "description": item.description})
    door = Daemon([{"name": k, "items": v} for k, v in groups.items()], welcome_s=12, photos=photos)
    try:
        for width, height in ((800, 480), (1920, 1080)):
            screen = context.new_page()
            screen.set_viewport_size({"width": width, "height": height})
            screen.goto(door.url)
            screen.wait_for_selector("section.house .item")
            assert screen.locator("section.house .item img.ph").count() == 1 and screen.locator("img.ph").is_visible()
            size = screen.evaluate("parseFloat(getComputedStyle(document.querySelector('.row')).fontSize)")
            assert size >= 12, f"menu text {size}px at {width}x{height}"
            screen.screenshot(path=str(folder / f"{next(n):02d}-door-{width}x{height}.png"))
            screen.close()
    finally:
        door.stop()

    # 5. a customer: page, consent recorded, name, consent withdrawn
    page.goto(base + "/customers/?show=all&q=70")
    page.click("text=Customer 70")
    summary = page.inner_text("#summary")
    assert "first purchase 2017-01-01" in summary and re.search(r"\$[\d,]+\.\d\d spent", summary), summary  # USD
    shot("customer")
    page.fill("input[name=display_name]", "Mina")
    page.fill("input[name=recorded_by]", "staff:jo")
    page.click("button:has-text('Record consent')")
    # a history customer: consent recorded on the dashboard puts no face on a device, and the page says so
    assert "not enrolled at any door yet" in page.inner_text("#summary")
    assert "recognised at the door" not in page.inner_text("#summary")
    shot("customer-consent")
    page.click("#withdraw")
    shot("withdraw-confirm")
    page.click("#confirm-button")
    assert "Consent withdrawn" in page.inner_text(".flash") and "consent withdrawn" in page.inner_text("#summary")
    shot("customer-withdrawn")

    # 6. erase with its confirmation
    page.click("#erase")
    assert "deleted now" in page.inner_text("#confirm")
    page.fill("#confirm-phrase", "ERASE")
    shot("erase-confirm")
    page.click("#confirm-button")
    assert "Erased" in page.inner_text(".flash")

    # 7. analytics over the imported range, CSV export
    page.goto(base + "/analytics/?all=1")
    assert page.locator("svg.chart").count() >= 5 and "No data yet" not in page.inner_text("main")
    assert "different currencies" in page.inner_text("#revenue")  # TWD and USD are never added up
    shot("analytics")
    page.select_option("#store", site["taipei"])
    page.click("#range-form button")
    assert "revenue (TWD)" in page.inner_text("#revenue")
    shot("analytics-taipei")
    with page.expect_download() as download:
        page.click("#csv-top")
    text = Path(download.value.path()).read_text()
    assert text.startswith("item,units") and len(text.splitlines()) > 5
    assert not errors, errors  # no CSP violation on any page
    context.close()
