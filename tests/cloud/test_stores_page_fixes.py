"""Stores & devices page, owner review fixes; each test was written to fail before its fix.

1. "New password…" of a device asks first (as "New POS token…" does), saying the door goes offline until the new
   password is entered on it (``DANGOL_MQTT_URL`` in ``/etc/dangol/edge.env``); only the confirmed post replaces it.
2. Store names are unique (case- and surrounding-space-insensitive): a duplicate is refused with a message, on "Add
   store" and on the new "Rename". "Remove" (confirmed, audited) removes a store without sales, devices, door visits
   or customers, with its settings, POS requests and staff links, and clears its retained catalogue and menus on the
   broker; a store with any of them says why it cannot be removed.
3. After "New password" the cloud's own drop of the box is no sighting: a device keeps its previous last-seen (or
   "never connected"), the broker keeps no retained status for it, and the page mentions a closed connection only
   when the box had one.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
import unicodedata
from datetime import timedelta, timezone
from html import unescape

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.events import Listener
from dangol_cloud.models import (AuditEntry, Customer, CustomerOrigin, Device, Menu, ModelVersion, PosRequest, Store,
                                 StoreSetting, User, UserStore, Visit, utcnow)
from dangol_cloud.security import hash_password, hash_token
from dangol_cloud.settings import Settings
from dangol_cloud.web.devices import presence
from tests.broker import MosquittoBroker

from .conftest import (DEV_KEY_BYTES, OWNER_EMAIL, add_owner, add_store_and_device, serving, sign_in_owner)
from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the `web` fixture
from .test_device_trust import CLOUD_PW, _handled, _wait
from .test_mqtt_review_fixes2 import _retained_status, _state
from .test_security_review_fixes import _Box, _broker_site, _owner

STAFF = "jo@cafe.example"


def _flashes(html: str) -> str:
    return " ".join(unescape(f) for f in re.findall(r'<div class="flash [^"]*"[^>]*>(.*?)</div>', html, re.S))


def _owner_client(app):
    client = app.test_client()
    assert sign_in(client).status_code == 302
    return client, csrf_of(client.get("/stores/").get_data(as_text=True))


# --- 1. "New password…" asks first -------------------------------------------------------------------------------
def test_new_password_asks_first_and_says_where_the_door_needs_it(web):  # noqa: F811
    app, db = web
    _store, device = add_store_and_device(db)
    with db.sessions() as s:
        before = s.get(Device, device).mqtt_password_hash
    client, token = _owner_client(app)
    assert "New password…" in unescape(client.get("/stores/").get_data(as_text=True))
    first = client.post(f"/stores/devices/{device}/password", data={"csrf_token": token})
    page = unescape(first.get_data(as_text=True))
    assert first.status_code == 200 and 'id="confirm"' in page and 'id="mqtt-password"' not in page
    assert "Front door" in page and "offline" in page
    assert "/etc/dangol/edge.env" in page and "DANGOL_MQTT_URL" in page and "systemctl restart dangol-edge" in page
    with db.sessions() as s:
        assert s.get(Device, device).mqtt_password_hash == before, "replaced before it was confirmed"
    done = unescape(client.post(f"/stores/devices/{device}/password",
                                data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True))
    assert re.search(r'id="mqtt-password">([^<]+)<', done)
    with db.sessions() as s:
        assert s.get(Device, device).mqtt_password_hash != before


# --- 2. unique store names, rename, remove -----------------------------------------------------------------------
def _stores(db) -> list[str]:
    with db.sessions() as s:
        return sorted(s.scalars(select(Store.name)))


@pytest.mark.parametrize("again", ["Berlin Café", "  berlin CAFÉ ", unicodedata.normalize("NFD", "Berlin Café")])
def test_a_duplicate_store_name_is_refused(web, again):  # noqa: F811
    app, db = web
    client, token = _owner_client(app)
    assert client.post("/stores/", data={"csrf_token": token, "name": "Berlin Café"}).status_code == 200
    page = unescape(client.post("/stores/", data={"csrf_token": token, "name": again, "ref": "b2"})
                    .get_data(as_text=True))
    assert "already exists" in page and "Berlin Café" in page and "is ready" not in page
    assert _stores(db) == ["Berlin Café"]
    client.post("/stores/", data={"csrf_token": token, "name": "Berlin Café Mitte"})
    assert _stores(db) == ["Berlin Café", "Berlin Café Mitte"]


def test_a_store_is_renamed_to_a_unique_name_audited(web):  # noqa: F811
    app, db = web
    store, _device = add_store_and_device(db)
    with db.transaction() as s:
        s.add(Store(name="Harbour", ref="harbour"))
    client, token = _owner_client(app)
    refused = client.post(f"/stores/{store}/name", data={"csrf_token": token, "name": " HARBOUR "},
                          follow_redirects=True).get_data(as_text=True)
    assert "already" in _flashes(refused) and _stores(db) == ["Harbour", "Main Street"]
    empty = client.post(f"/stores/{store}/name", data={"csrf_token": token, "name": "  "}, follow_redirects=True)
    assert "name" in _flashes(empty.get_data(as_text=True)).lower() and _stores(db) == ["Harbour", "Main Street"]
    done = client.post(f"/stores/{store}/name", data={"csrf_token": token, "name": " Main Street Berlin "},
                       follow_redirects=True).get_data(as_text=True)
    assert "Main Street Berlin" in _flashes(done) and _stores(db) == ["Harbour", "Main Street Berlin"]
    same = client.post(f"/stores/{store}/name", data={"csrf_token": token, "name": "main street berlin"},
                       follow_redirects=True)  # its own name in other capitals is not a duplicate
    assert same.status_code == 200 and _stores(db) == ["Harbour", "main street berlin"]
    with db.sessions() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "store-renamed")).all()
    assert len(entries) == 2 and entries[0].actor == OWNER_EMAIL and store in entries[0].detail


def _bare_store(db, name: str = "Popup") -> str:
    """A store with settings, a POS request and a staff user's tick, but no sales, devices, visits or customers."""
    with db.transaction() as s:
        store = Store(name=name, ref=name.lower(), api_token_hash=hash_token(f"token-{name}"))
        staff = User(email=STAFF, password_hash=hash_password("staff pass 42"), role="staff")
        s.add_all([store, staff])
        s.flush()
        s.add_all([StoreSetting(store_id=store.id, currency="KRW", timezone="Asia/Seoul"),
                   PosRequest(store_id=store.id, key="k1", body_sha256="0" * 64, response={"accepted": 0}),
                   UserStore(user_id=staff.id, store_id=store.id)])
        return store.id


def test_a_store_without_history_is_removed_after_confirming_audited(web):  # noqa: F811
    app, db = web
    keep, _device = add_store_and_device(db)
    store = _bare_store(db)
    client, token = _owner_client(app)
    assert "Remove store…" in unescape(client.get("/stores/").get_data(as_text=True))
    first = client.post(f"/stores/{store}/delete", data={"csrf_token": token})
    page = unescape(first.get_data(as_text=True))
    assert first.status_code == 200 and 'id="confirm"' in page and "Popup" in page and STAFF in page
    assert _stores(db) == ["Main Street", "Popup"]
    done = client.post(f"/stores/{store}/delete", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    assert "Removed Popup" in _flashes(done.get_data(as_text=True))
    assert _stores(db) == ["Main Street"]
    with db.sessions() as s:
        for table in (StoreSetting, PosRequest, UserStore):
            assert s.scalar(select(func.count()).select_from(table).where(table.store_id == store)) == 0, table
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "store-removed"))
        assert entry is not None and entry.actor == OWNER_EMAIL and store in entry.detail and "Popup" in entry.detail
        assert s.get(Store, keep) is not None


@pytest.mark.parametrize("history", ["device", "sale", "visit", "customer"])
def test_a_store_with_history_is_not_removed_and_the_page_says_why(web, history):  # noqa: F811
    app, db = web
    store, device = add_store_and_device(db)
    with db.transaction() as s:
        if history != "device":
            s.delete(s.get(Device, device))
        if history in ("sale", "customer"):
            mina = Customer(display_name="Mina Park", status="active", source="edge")
            s.add(mina)
            s.flush()
            if history == "customer":
                s.add(CustomerOrigin(customer_id=mina.id, store_id=store))
            else:
                from dangol_cloud.models import CatalogueItem, Purchase

                latte = CatalogueItem(ref="latte", name="Latte")
                s.add(latte)
                s.flush()
                s.add(Purchase(customer_id=mina.id, item_id=latte.id, quantity=1, amount=3.5, store_id=store,
                               ts=utcnow(), source="pos", idempotency_key="p1"))
        if history == "visit":
            s.add(Visit(event_id=str(uuid.uuid4()), store_id=store, ts=utcnow()))
    client, token = _owner_client(app)
    for data in ({"csrf_token": token}, {"csrf_token": token, "confirm": "yes"}):
        page = client.post(f"/stores/{store}/delete", data=data, follow_redirects=True).get_data(as_text=True)
        said = _flashes(page)
        assert "cannot be removed" in said and {"device": "device", "sale": "sale", "visit": "visit",
                                                "customer": "customer"}[history] in said, said
        assert 'id="confirm"' not in page and _stores(db) == ["Main Street"]
    renamed = client.post(f"/stores/{store}/name", data={"csrf_token": token, "name": "Main St."},
                          follow_redirects=True)
    assert renamed.status_code == 200 and _stores(db) == ["Main St."]  # renaming is always allowed


def _retained_under(broker, prefix: str) -> set[str]:
    """Topics under ``prefix`` holding a retained message on ``broker`` (a marker after the SUBACK comes last)."""
    got: set[str] = set()
    marker = f"dangol/v1/tests/{uuid.uuid4().hex}"
    subscribed, done = threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)

    def on_message(client, userdata, message):
        if message.topic == marker:
            done.set()
        elif message.retain and message.payload:
            got.add(message.topic)

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe([(prefix + "#", 1), (marker, 1)])
        assert subscribed.wait(5)
        c.publish(marker, b"x", qos=1).wait_for_publish(5)
        assert done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def test_removing_a_store_clears_what_the_cloud_published_for_it(tmp_path, sqlite_url):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    keep, _device = add_store_and_device(db)
    store = _bare_store(db)
    with db.transaction() as s:
        s.add(ModelVersion(version="v1", path="x"))
        everywhere = Customer(display_name="Ann", status="active", source="dashboard", consent_at=utcnow(),
                              consent_by="owner")
        s.add(everywhere)
        s.flush()
        s.add(Menu(customer_id=everywhere.id, model_version="v1", picks=[]))
        customer = everywhere.id
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="old-publish", protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        for sid in (store, keep):  # what an earlier Publish left retained
            for topic in (proto.catalogue_topic(sid), proto.menu_topic(sid, customer)):
                client.publish(topic, b'{"x": 1}', qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        gone = f"dangol/v1/stores/{store}/"
        assert len(_retained_under(broker, gone)) == 2
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                            mqtt_url=broker.url, _env_file=None)
        owner, token = _owner_client(create_app(settings, db=db, TESTING=True))
        done = owner.post(f"/stores/{store}/delete", data={"csrf_token": token, "confirm": "yes"},
                          follow_redirects=True).get_data(as_text=True)
        assert "Removed Popup" in _flashes(done)
        assert _retained_under(broker, gone) == set(), "its retained catalogue and menus stay on the broker"
        assert len(_retained_under(broker, f"dangol/v1/stores/{keep}/")) == 2, "another store's were cleared"
    db.dispose()


# --- 3. the cloud's own drop is no sighting ----------------------------------------------------------------------
def _new_password(owner, device: str) -> str:
    token = csrf_of(owner.get("/stores/").get_data(as_text=True))
    return unescape(owner.post(f"/stores/devices/{device}/password",
                               data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_never_connected_device_stays_never_connected_after_a_new_password(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    listener = Listener(db, broker.url_as("cloud", CLOUD_PW), client_id="cloud-listener").start()
    try:
        owner = _owner(app)
        page = _new_password(owner, chain.device_b)
        state = re.search(r'id="password-state">(.*?)</p>', page, re.S).group(1)
        assert "the old one no longer works" in state and "closed" not in state and "never connected" in state
        time.sleep(1)  # what the listener would receive meanwhile
        assert _state(db, chain.device_b) == (None, None)
        assert _retained_status(broker, chain.device_b, user="cloud", password=CLOUD_PW) is None
        shown = owner.get("/stores/devices/status.json").get_json()["devices"][chain.device_b]
        assert shown["state"] == "never" and shown["label"] == "never connected" and shown["last_seen"] is None
    finally:
        listener.stop()
        broker.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_dropped_box_keeps_its_last_seen_after_a_new_password(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    cloud_url = broker.url_as("cloud", CLOUD_PW)
    listener = Listener(db, cloud_url, client_id="cloud-listener").start()
    box = _Box(broker, chain.user_a, "pw-a", proto.device_client_id(chain.device_a))
    try:
        assert box.accepted
        online = proto.Status(device_id=uuid.UUID(chain.device_a), state="online", ts=utcnow())
        box.send(proto.status_topic(chain.device_a), proto.dump_payload(online), retain=True)
        assert _wait(lambda: _state(db, chain.device_a)[0] == "online")
        earlier = utcnow() - timedelta(minutes=7)
        with db.transaction() as s:  # as if its last report came 7 minutes ago
            s.get(Device, chain.device_a).status_at = earlier
        page = _new_password(_owner(app), chain.device_a)
        state = re.search(r'id="password-state">(.*?)</p>', page, re.S).group(1)
        assert "the old one no longer works" in state and "closed" in state
        assert box.dropped.wait(5)
        time.sleep(1)  # what the listener would receive meanwhile
        got, at = _state(db, chain.device_a)
        assert got == "offline" and abs((at - earlier.replace(tzinfo=timezone.utc)).total_seconds()) < 1, at
        assert presence(got, at, None)["seconds"] > 6 * 60
        assert _retained_status(broker, chain.device_a, user="cloud", password=CLOUD_PW) is None
        listener.stop()  # a restart of serve hands over nothing that dates it either
        listener = Listener(db, cloud_url, client_id="cloud-listener").start()
        time.sleep(1)
        assert _state(db, chain.device_a)[0] == "offline"
        assert _handled(listener) == 0
    finally:
        box.close()
        listener.stop()
        broker.stop()


# --- the page in a browser ---------------------------------------------------------------------------------------
def test_stores_page_in_a_browser(browser, tmp_path, sqlite_url):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    with serving(app) as base:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(15_000)
        sign_in_owner(page, base)
        page.goto(base + "/stores/")
        row = page.locator("tr", has_text="Front door")
        assert "never connected" in row.inner_text()
        row.locator("button", has_text="New password").click()
        page.wait_for_load_state()
        confirm = page.locator("#confirm").inner_text()
        assert "offline" in confirm and "/etc/dangol/edge.env" in confirm, confirm
        page.click("#confirm-button")
        page.wait_for_load_state()
        assert page.locator("#mqtt-password").inner_text().strip()
        assert "was closed" not in page.locator("#password-state").inner_text()
        page.goto(base + "/stores/")
        assert "never connected" in page.locator("tr", has_text="Front door").inner_text()
        # a second "Main Street" is refused, saying so
        page.fill("#name", " main street ")
        page.click("button:has-text('Add store')")
        page.wait_for_load_state()
        assert "already" in page.locator("body").inner_text()
        assert page.locator("h2", has_text="Main Street").count() == 1
        # add a pop-up store, rename it, remove it
        page.fill("#name", "Popup")
        page.click("button:has-text('Add store')")
        page.wait_for_load_state()
        page.goto(base + "/stores/")
        card = page.locator(".card", has=page.locator("h2", has_text="Popup"))
        card.locator("summary", has_text="Rename").click()
        card.locator("input[id^=rename-]").fill("Popup Mitte")
        card.locator("button", has_text="Save name").click()
        page.wait_for_load_state()
        assert page.locator("h2", has_text="Popup Mitte").count() == 1
        card = page.locator(".card", has=page.locator("h2", has_text="Popup Mitte"))
        card.locator("button", has_text="Remove store").click()
        page.wait_for_load_state()
        assert "Popup Mitte" in page.locator("#confirm").inner_text()
        page.click("#confirm-button")
        page.wait_for_load_state()
        assert page.locator("h2", has_text="Popup").count() == 0
        # a store with a device says why it cannot be removed
        page.locator(".card", has=page.locator("h2", has_text="Main Street")).locator(
            "button", has_text="Remove store").click()
        page.wait_for_load_state()
        assert "cannot be removed" in page.locator("body").inner_text()
        page.context.close()
    db.dispose()
