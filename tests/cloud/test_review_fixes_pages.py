"""Review fixes seen in headless Chromium on a live dashboard (SQLite, a real Mosquitto, real Ta-Feng purchases):

1. the item page of a menu item shown at the door and bought as a POS product mapped to it counts the purchase
   as "bought after being shown" (as Analytics does);
2. Publish with nothing changed re-sends the newest catalogue version (photos inlined) instead of storing a copy;
3. the Today page's "items on the menu" counts menu items, not every imported POS product;
4. withdrawing consent deletes the customer's day-part picks with the other picks.
"""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.feedback import credit_shown_picks
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import (CatalogueItem, CatalogueVersion, Customer, Device, Menu, MenuDayparts, ModelVersion,
                                 ProductMapping, Purchase, utcnow)
from dangol_cloud.services import record_consent
from dangol_cloud.settings import Settings

from .conftest import owner_database, serving, sign_in_owner
from .test_cloud_mqtt import Collector
from .test_review_fixes_feedback import shown_menu_item_bought_as_product

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path, ta_feng_slice):
    """A live dashboard with the owner, a store with its device, a real broker and the Ta-Feng slice imported."""
    broker, url, db, store_id = owner_database(tmp_path)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, mqtt_url=broker.url, secret_key="review",
                        timezone="UTC", _env_file=None)
    with serving(create_app(settings, db=db)) as base:
        yield {"base": base, "db": db, "broker": broker, "store": store_id, "settings": settings,
               "slice": ta_feng_slice}
    db.dispose()
    broker.stop()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    sign_in_owner(tab, site["base"])
    yield tab
    context.close()


def _import(site) -> None:
    with site["db"].transaction() as s:
        import_rows(s, parse_purchases(site["slice"], "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    store_id=site["store"])


def _stat(page, label: str) -> str:
    return page.locator(".card.stat", has_text=label).locator("b").inner_text()


def test_item_page_counts_a_shown_menu_item_bought_as_its_product(page, site, ta_feng_slice):
    db = site["db"]
    with db.sessions() as s:
        device = s.scalar(select(Device.id).where(Device.store_id == site["store"]))
    case = shown_menu_item_bought_as_product(db, ta_feng_slice, (site["store"], device))
    with db.transaction() as s:
        assert credit_shown_picks(s) == case["lines"] >= 1
    page.goto(f"{site['base']}/catalogue/{case['latte']}/about")
    rows = {r.locator("td").nth(0).inner_text(): r.locator("td").nth(1).inner_text()
            for r in page.locator("tr", has=page.locator("td.num")).all()}
    assert rows["Door visits that showed it"] == "1"
    assert rows["Bought after being shown (one credit per purchase)"] == f"{case['lines']:,}"  # before: 0
    page.goto(f"{site['base']}/catalogue/{case['scone']}/about")  # shown, not bought
    assert page.locator("tr", has_text="Bought after being shown").locator("td.num").inner_text() == "0"


def test_publish_with_no_change_resends_the_newest_version(page, site, data_dir):
    db, settings = site["db"], site["settings"]
    settings.photos_dir.mkdir(parents=True, exist_ok=True)
    photo = data_dir / "clips" / "face_recognition_examples" / "obama-1080p.jpg"  # a real JPEG
    with db.transaction() as s:
        for n in range(3):
            shutil.copy(photo, settings.photos_dir / f"p{n}.jpg")
            s.add(CatalogueItem(ref=f"item-{n}", name=f"Bagel {n}", category="Bakery", price=3.0, tags=[],
                                photo=f"p{n}.jpg"))
    page.goto(site["base"] + "/catalogue/")
    page.click("#publish")
    assert "Published catalogue version 1 (3 items) to 1 store(s)" in page.inner_text(".flash")
    topic = proto.catalogue_topic(site["store"])
    listener = Collector(site["broker"], [topic])
    try:
        assert len(listener.wait_for(1)) == 1  # the retained version 1
        for _ in range(3):  # the owner presses Publish again with nothing changed
            page.click("#publish")
            assert "Published catalogue version 1 again (nothing changed; 3 items) to 1 store(s)" in page.inner_text(
                ".flash")
        sent = listener.wait_for(4)
    finally:
        listener.client.disconnect()
        listener.client.loop_stop()
    versions = [json.loads(payload)["version"] for _t, payload, _r in sent]
    assert versions == [1, 1, 1, 1]  # re-sent each time
    assert all(item["photo_url"].startswith("data:image/jpeg;base64,") for item in json.loads(sent[-1][1])["items"])
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueVersion)) == 1  # before the fix: 4 snapshots
    with db.transaction() as s:  # a change makes the next version
        s.scalar(select(CatalogueItem).where(CatalogueItem.ref == "item-0")).available = False
    page.click("#publish")
    assert "Published catalogue version 2 (3 items)" in page.inner_text(".flash")
    assert "Stores have version 2" in page.inner_text("main")


def test_today_counts_menu_items_not_imported_products(page, site):
    _import(site)
    db = site["db"]
    with db.transaction() as s:
        products = s.scalar(select(func.count()).select_from(ProductMapping))
        s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
    assert products > 100  # the real slice's products, none on the menu yet
    page.goto(site["base"] + "/")
    assert _stat(page, "items on the menu") == "1"  # before the fix: every product counted
    with db.transaction() as s:  # three products become menu items of their own; one more is sold as Flat white
        ids = list(s.scalars(select(ProductMapping.product_id).order_by(ProductMapping.product_id).limit(4)))
        map_products(s, ids[:3], "self", by="owner")
        map_products(s, ids[3:], s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == "flat-white")),
                     by="owner")
        s.scalar(select(CatalogueItem).where(CatalogueItem.id == ids[0])).retired = True
    page.reload()
    assert _stat(page, "items on the menu") == "3"  # Flat white and two products; the retired one is off
    page.goto(site["base"] + "/catalogue/")
    assert page.locator("#items tr").count() == 1 + 3  # the header row and the three menu items


def test_withdrawing_consent_deletes_the_daypart_picks(page, site):
    _import(site)
    db = site["db"]
    with db.transaction() as s:  # a real imported customer enrols; training wrote picks for every day-part
        customer = s.scalar(select(Customer).join(Purchase).group_by(Customer.id)
                            .order_by(func.count().desc(), Customer.id).limit(1))
        record_consent(s, customer, display_name="Mina Park", recorded_by="staff: Jo", text_version="v1",
                       recorded_at=utcnow(), actor="owner@cafe.example")
        bought = list(s.scalars(select(Purchase.item_id).where(Purchase.customer_id == customer.id).limit(3)))
        s.add(ModelVersion(version="m1", path=str(site["settings"].models_dir / "m1")))
        s.flush()
        picks = [{"item_id": i, "score": 1.0 - n / 10, "reasons": ["you often buy this"]} for n, i in enumerate(bought)]
        s.add(Menu(customer_id=customer.id, model_version="m1", picks=picks))
        s.add(MenuDayparts(customer_id=customer.id, model_version="m1", dayparts={"breakfast": picks, "lunch": picks}))
        cid = customer.id
    page.goto(f"{site['base']}/customers/{cid}")
    assert page.locator("#dayparts").is_visible()
    page.click("#withdraw")
    assert "picks are deleted now" in page.inner_text("main")
    page.click("#confirm-button")
    assert "Consent withdrawn" in page.inner_text(".flash")
    page.goto(f"{site['base']}/customers/{cid}")
    assert page.locator("#consent-withdrawn").is_visible()
    assert page.locator("#dayparts").count() == 0 and "Picks by time of day" not in page.inner_text("main")
    with db.sessions() as s:
        assert s.get(Menu, cid) is None and s.get(MenuDayparts, cid) is None  # before: the day-parts stayed
