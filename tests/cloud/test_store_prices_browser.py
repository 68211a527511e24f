"""An owner of a chain (Seoul in won, Taipei in New Taiwan dollars; CURRENCY=KRW) sets the croissant's Taipei price
on the item form in headless Chromium, sees it on the form and the catalogue, publishes, and each store's door gets
its own price (a real Mosquitto). Before: the form had one price, and Taipei's door showed "NT$3,800"."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker, free_port

from .conftest import DEV_KEY_BYTES, add_owner, sign_in_owner
from .test_store_prices import _chain, _field, _prices, _retained_catalogues

pytestmark = pytest.mark.slow


def shot(page, name: str) -> None:
    """A full-page screenshot into $DANGOL_SCREENSHOTS, when set."""
    folder = os.environ.get("DANGOL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.fixture
def chain_site(tmp_path, sqlite_url):
    """A live dashboard of the chain on a free port, publishing to a real Mosquitto."""
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    ids = _chain(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, mqtt_url=broker.url, currency="KRW",
                        secret_key="browser-test", _env_file=None)
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "db": db, "broker": broker, **ids}
    server.shutdown()
    thread.join(5)
    db.dispose()
    broker.stop()


def test_the_owner_sets_a_taipei_price_and_each_door_gets_its_own(browser, chain_site):
    site = chain_site
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        sign_in_owner(page, site["base"])
        page.goto(f"{site['base']}/catalogue/{site['croissant']}")
        taipei = page.locator(f"input[name={_field(site['taipei'])}]")
        assert page.inner_text(f"label[for={_field(site['taipei'])}]") == "Taipei (TWD)"
        assert page.inner_text("label[for=price]") == "Catalogue price (KRW)"
        assert taipei.get_attribute("step") == "0.01"  # TWD has cents; Seoul's field takes whole won
        assert page.locator(f"input[name={_field(site['seoul'])}]").get_attribute("step") == "1"
        taipei.fill("95")
        shot(page, "store-prices-form")
        page.click("button:has-text('Save')")
        assert "Saved “Croissant”" in page.inner_text(".flash")
        row = page.locator("#items tr:has-text('Croissant')")
        assert "Taipei: NT$95.00" in row.inner_text() and "₩3,800" in row.inner_text()
        shot(page, "store-prices-catalogue")
        page.goto(f"{site['base']}/catalogue/{site['croissant']}")
        assert page.locator(f"input[name={_field(site['taipei'])}]").input_value() == "95.00"  # shown on the form
        page.goto(site["base"] + "/catalogue/")
        page.click("#publish")
        assert "Published catalogue version 1" in page.inner_text(".flash")
    finally:
        context.close()
    got = _retained_catalogues(site["broker"], [site["seoul"], site["taipei"]])
    assert _prices(got[site["taipei"]][1]) == {"Croissant": 95, "Americano": None}
    assert _prices(got[site["seoul"]][1]) == {"Croissant": 3800, "Americano": 4500}
