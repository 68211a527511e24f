"""``catalogue/1`` lists every available menu item, each marked ``house`` or not (the door's house page shows at most
``house_per_category`` per category, the best sellers), and carries the zone the day-parts were trained in; a
customer's pick beyond the house cap reaches the door. Real Ta-Feng rows, a real database and a real Mosquitto."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products, on_menu, sales_by_menu_item, set_house_per_category
from dangol_cloud.models import CatalogueItem, Customer, Menu, ModelVersion, ProductMapping, Purchase, Store
from dangol_cloud.publishing import catalogue_messages, publish, publish_catalogue_version, snapshot_items
from dangol_edge.menu_text import choose_picks
from dangol_edge.web.formatting import house_menu

from .conftest import add_store_and_device, utc

CAP = 3
INSTANT = datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)


def _every_product_on_the_menu(db, ta_feng_slice) -> str:
    """Import the real rows, put every product on the menu as itself, house menu of CAP per category; store id."""
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        map_products(s, list(s.scalars(select(ProductMapping.product_id))), "self", by="owner")
        set_house_per_category(s, CAP)
    return store_id


def _retained(broker, store_id: str) -> dict[str, object]:
    """The retained messages of the store as a door receives them: ``{topic: parsed payload}``."""
    got: dict[str, object] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"door-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, proto.parse_payload(m.topic, m.payload))
    client.on_subscribe = lambda *a: done.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(f"dangol/v1/stores/{store_id}/#", qos=1)
        assert done.wait(5)
        threading.Event().wait(0.8)  # the retained messages follow the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_the_catalogue_holds_every_menu_item_and_marks_the_best_sellers_house(db, ta_feng_slice, mosquitto):
    store_id = _every_product_on_the_menu(db, ta_feng_slice)
    with db.transaction() as s:
        publish_catalogue_version(s, published_by="owner")
        report = publish(s, mosquitto.url, timezone="America/New_York", menus=False)
    assert report.catalogue == 1
    (cat,) = [m for m in _retained(mosquitto, store_id).values() if isinstance(m, proto.Catalogue)]
    with db.sessions() as s:
        menu_ids = set(s.scalars(select(CatalogueItem.id).where(CatalogueItem.retired.is_(False), on_menu())))
        sold = sales_by_menu_item(s)
    assert {i.id for i in cat.items} == menu_ids                 # before the fix: CAP per category only
    assert cat.timezone == "America/New_York"
    by_category: dict = defaultdict(list)
    for item in cat.items:
        by_category[item.category].append(item)
    assert sum(len(items) > CAP for items in by_category.values()) >= 2   # the data has categories beyond the cap
    for items in by_category.values():
        house = [i for i in items if i.house]
        assert len(house) == min(CAP, len(items))
        assert min(sold.get(i.id, 0) for i in house) >= max((sold.get(i.id, 0) for i in items if not i.house),
                                                            default=0)   # the best sellers are the house menu
    shown = house_menu(cat)                                           # the door's house page
    assert max(len(g["items"]) for g in shown) == CAP
    assert sum(len(g["items"]) for g in shown) == sum(i.house for i in cat.items)


def test_a_pick_beyond_the_house_cap_reaches_the_door(db, ta_feng_slice, mosquitto):
    store_id = _every_product_on_the_menu(db, ta_feng_slice)
    with db.transaction() as s:
        house = {i["id"] for i in snapshot_items(s) if i.get("house", True)}
        # a real customer whose purchases include items beyond the house cap; their picks are what they bought
        bought = s.execute(select(Purchase.customer_id, Purchase.item_id, func.sum(Purchase.quantity).label("q"))
                           .group_by(Purchase.customer_id, Purchase.item_id)).all()
        per_customer: dict = defaultdict(list)
        for customer_id, item_id, q in bought:
            per_customer[customer_id].append((-q, item_id))
        customer_id, picks = next((c, [i for _, i in sorted(v)][:6]) for c, v in sorted(per_customer.items())
                                  if len(v) >= 6 and any(i not in house for _, i in sorted(v)[:6]))
        customer = s.get(Customer, customer_id)
        customer.display_name, customer.consent_by, customer.consent_at = "Mina Park", "staff", utc(2026, 1, 2)
        s.add(ModelVersion(version="m-test", path="nowhere"))
        s.flush()
        s.add(Menu(customer_id=customer_id, model_version="m-test", generated_at=utc(2026, 1, 3),
                   picks=[{"item_id": i, "score": 6.0 - n, "reasons": []} for n, i in enumerate(picks)]))
        publish_catalogue_version(s, published_by="owner")
        publish(s, mosquitto.url, timezone="Asia/Taipei")
    retained = _retained(mosquitto, store_id)
    (cat,) = [m for m in retained.values() if isinstance(m, proto.Catalogue)]
    (menu,) = [m for m in retained.values() if isinstance(m, proto.Menu)]
    beyond = [i for i in picks if i not in house]
    assert beyond and [p.item_id for p in menu.items] == picks
    door = [i.id for i in choose_picks(menu, cat, limit=6, at=INSTANT)]
    assert door == picks                      # before the fix: the picks beyond the house cap were missing


def test_a_catalogue_too_big_for_one_message_keeps_the_house_menu_and_the_best_sellers(db, ta_feng_slice, caplog):
    """Descriptions long enough that every item would not fit in one message (edges refuse more than
    MAX_PAYLOAD_BYTES): the house items stay, the least sold others are left out, and that is logged."""
    from dangol_protocol.parse import MAX_PAYLOAD_BYTES

    _every_product_on_the_menu(db, ta_feng_slice)
    with db.transaction() as s:
        items = list(s.scalars(select(CatalogueItem).where(CatalogueItem.retired.is_(False), on_menu())))
        for item in items:
            item.description = (item.name + " ") * (3500 // (len(item.name) + 1))
        assert sum(len(i.description) for i in items) > 1.5 * MAX_PAYLOAD_BYTES
    with caplog.at_level(logging.WARNING, logger="dangol_cloud.publishing"), db.transaction() as s:
        publish_catalogue_version(s, published_by="owner")
        stores = list(s.scalars(select(Store)))
        ((topic, payload, _),) = catalogue_messages(s, stores, "EUR", timezone="Asia/Taipei")
        sold = sales_by_menu_item(s)
        house_count = sum(min(CAP, n) for (n,) in s.execute(
            select(func.count()).select_from(CatalogueItem).where(CatalogueItem.retired.is_(False), on_menu())
            .group_by(CatalogueItem.category)))
    assert len(payload) <= MAX_PAYLOAD_BYTES
    cat = proto.parse_payload(topic, payload)
    assert sum(i.house for i in cat.items) == house_count and len(cat.items) < len(items)
    kept = {i.id for i in cat.items if not i.house}
    left_out = {i.id for i in items} - {i.id for i in cat.items}
    assert min(sold.get(i, 0) for i in kept) >= max(sold.get(i, 0) for i in left_out)
    assert "left out" in caplog.text and json.loads(payload)["timezone"] == "Asia/Taipei"


def test_the_doors_get_the_zone_only_when_the_cafe_set_one(monkeypatch, tmp_path):
    """Default ``TIMEZONE`` (UTC): a POS's naive times were read as UTC, so the trained day-part hours are the café's
    wall-clock hours and the doors keep their own clocks; a zone that was set goes to the doors."""
    from dangol_cloud.settings import load_settings

    monkeypatch.delenv("DANGOL_TIMEZONE", raising=False)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path))
    assert load_settings().timezone == "UTC" and load_settings().door_timezone is None
    monkeypatch.setenv("DANGOL_TIMEZONE", "Asia/Seoul")
    assert load_settings().door_timezone == "Asia/Seoul"
    monkeypatch.setenv("DANGOL_TIMEZONE", "UTC")
    assert load_settings().door_timezone == "UTC"
