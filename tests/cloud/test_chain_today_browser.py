"""The owner journey of 7 December, in headless Chromium (``tests/browser.py``): a Seoul store (KRW, Asia/Seoul)
and a Taipei store (TWD, Asia/Taipei), ``TIMEZONE`` UTC and ``CURRENCY`` EUR. Mina enrols at the Seoul door and
arrives there just after Seoul's midnight; a guest arrives at the Taipei door just after Taipei's; others arrived
just before each store's midnight (yesterday there). Today reads "2 arrivals today (1 recognised)", names each
arrival's and each door's store, and Mina's page shows her picks in won and her consent on the Seoul clock.
Screenshots: ``$DANGOL_SCREENSHOTS/chain-today`` (else the test's tmp folder)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import CatalogueItem, Device, Menu, ModelVersion, Store, StorePrice, StoreSetting
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, add_owner, screenshot_page, serving, sign_in_owner
from .test_chain_today import SEOUL, TAIPEI, _arrive, _enrol, _midnight

pytestmark = pytest.mark.slow
TIMEOUT_MS = 20_000


def test_today_and_minas_page_in_a_chain_across_zones(browser, tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    devices, stores = {}, {}
    with db.transaction() as s:
        for name, zone, currency in (("Seoul Seongsu", "Asia/Seoul", "KRW"), ("Taipei", "Asia/Taipei", "TWD")):
            store = Store(name=name, ref=zone)
            s.add(store)
            s.flush()
            s.add(StoreSetting(store_id=store.id, timezone=zone, currency=currency))
            device = Device(store_id=store.id, name="Front door", mqtt_username=f"device-{uuid.uuid4()}",
                            mqtt_password_hash="x")
            s.add(device)
            s.flush()
            devices[name], stores[name] = device.id, store.id
    minute = timedelta(minutes=1)
    consent_at = _midnight(SEOUL, 1) + 25 * minute
    mina = _enrol(db, devices["Seoul Seongsu"], "Mina Park", consent_at)
    _arrive(db, devices["Seoul Seongsu"], _midnight(SEOUL) + 30 * minute, mina)
    _arrive(db, devices["Seoul Seongsu"], _midnight(SEOUL) - minute)
    _arrive(db, devices["Taipei"], _midnight(TAIPEI) + minute)
    for _ in range(2):
        _arrive(db, devices["Taipei"], _midnight(TAIPEI) - minute)
    with db.transaction() as s:
        s.add_all([ModelVersion(version="m-chain", path="nowhere"),
                   CatalogueItem(id="latte", name="Caffè latte", ref="latte", price=4.5)])  # EUR: the catalogue's
        s.flush()
        s.add(StorePrice(item_id="latte", store_id=stores["Seoul Seongsu"], price=5000, currency="KRW"))
        s.add(Menu(customer_id=mina, model_version="m-chain",
                   picks=[{"item_id": "latte", "score": 0.03, "reasons": ["popular with our customers"]}]))
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="chain", timezone="UTC",
                        currency="EUR", _env_file=None)
    folder, page = screenshot_page(browser, tmp_path, "chain-today", TIMEOUT_MS)
    try:
        with serving(create_app(settings, db=db)) as base:
            sign_in_owner(page, base)
            page.goto(base + "/")
            page.screenshot(path=str(folder / "today.png"), full_page=True)
            assert "2\narrivals today (1 recognised)" in page.inner_text(".grid.g4")
            recent = page.locator(".card", has_text="Recent arrivals")
            mina_row = recent.locator("tr", has_text="Mina Park").inner_text()
            assert "Seoul Seongsu" in mina_row and (_midnight(SEOUL) + 30 * minute).astimezone(SEOUL).strftime(
                "%Y-%m-%d %H:%M") in mina_row, mina_row
            assert recent.locator("tr", has_text="Taipei").count() == 3
            system = page.locator(".card", has_text="System")
            doors = system.locator("tr", has_text="Front door").all_inner_texts()
            assert len(doors) == 2 and any("Seoul Seongsu" in d for d in doors) and any(
                "Taipei" in d for d in doors), doors

            page.click(f"a[href='/customers/{mina}']")
            page.screenshot(path=str(folder / "mina.png"), full_page=True)
            assert "₩5,000" in page.inner_text("#picks") and "€" not in page.inner_text("#picks")
            assert consent_at.astimezone(SEOUL).strftime("%Y-%m-%d %H:%M") in page.inner_text("#consent-card")
            page.goto(base + "/customers/")
            row = page.locator("tr", has_text="Mina Park").inner_text()
            assert consent_at.astimezone(SEOUL).strftime("%Y-%m-%d") in row, row
    finally:
        page.context.close()
        db.dispose()
