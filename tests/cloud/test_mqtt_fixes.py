"""MQTT review fixes, each with a real Mosquitto and a fresh SQLite database:

1. an erasure (or a consent withdrawal) clears the customer's retained menu at every store, whichever devices
   still have to confirm (the asking device's store, a store without a device, retention without devices);
2. the cloud listener takes status at QoS 0, so a cloud outage queues only events: a full queue of status
   reports never drops an arrival the edge already had acknowledged; the broker configs hold a long outage;
3. a status report re-sends only the erasures that device has not confirmed, and only when it comes online
   (or restarted), never on every health report;
4. a removed device's retained status is cleared, and a retained status of an unknown device is counted,
   never dead-lettered.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.erasure import decide_erasure_request, erase_customer, run_retention
from dangol_cloud.events import Listener, Outcome, handle_message
from dangol_cloud.models import (
    CatalogueItem, Customer, CustomerOrigin, DeadLetter, Device, Erasure, ErasureRequest, Menu, ModelVersion, Store,
    Visit, utcnow,
)
from dangol_cloud.publishing import publish, republish_erasures
from dangol_cloud.security import hash_token, mosquitto_hash
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner
from .test_device_trust import _wait

REPO = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------------------------------
@pytest.fixture
def sdb(sqlite_url):
    database = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    database.migrate()
    yield database
    database.dispose()


def _settings(tmp_path, db: Database, broker) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db.url, mqtt_url=broker.url, secret_key="k",
                    _env_file=None)


def _store(db: Database, name: str) -> str:
    with db.transaction() as s:
        store = Store(name=name, ref=name, api_token_hash=hash_token(f"{name}-token-0123456789"))
        s.add(store)
        s.flush()
        return store.id


def _device(db: Database, store_id: str, name: str = "Door") -> str:
    with db.transaction() as s:
        device = Device(store_id=store_id, name=name, mqtt_username=f"device-{uuid.uuid4()}",
                        mqtt_password_hash=mosquitto_hash("pw"))
        s.add(device)
        s.flush()
        return device.id


def _regular(db: Database, name: str, *, origin: tuple[str, str] | None = None, created=None) -> str:
    """A consenting active customer with a menu; ``origin`` = (store, device) that enrolled them."""
    with db.transaction() as s:
        if s.get(ModelVersion, "m1") is None:
            s.add(ModelVersion(version="m1", path="/nonexistent"))
            s.add(CatalogueItem(id="latte", ref="latte", name="Latte"))
        customer = Customer(display_name=name, status="active", consent_at=utcnow(), consent_by="staff",
                            consent_text_version="2026-01")
        if created is not None:
            customer.created_at = created
        s.add(customer)
        s.flush()
        s.add(Menu(customer_id=customer.id, model_version="m1", generated_at=utcnow(),
                   picks=[{"item_id": "latte", "score": 1.0, "reasons": []}]))
        if origin is not None:
            s.add(CustomerOrigin(customer_id=customer.id, store_id=origin[0], device_id=origin[1],
                                 created_at=utcnow()))
        return customer.id


def _retained_menus(broker) -> dict[str, bytes]:
    """Every retained menu on the broker: ``{topic: payload}``."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.__setitem__(m.topic, bytes(m.payload)) if m.retain else None
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe(f"{proto.ROOT}/stores/+/menus/+", qos=1)
        assert subscribed.wait(5)
        # retained messages follow the SUBACK: read until none came for 0.5 s (hundreds take longer on a busy
        # machine than a fixed wait), at most 15 s
        deadline, seen, quiet_since = time.monotonic() + 15, -1, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if len(got) != seen:
                seen, quiet_since = len(got), time.monotonic()
            elif time.monotonic() - quiet_since >= 0.5:
                break
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def _menu_stores(menus: dict[str, bytes], customer_id: str) -> set[str]:
    return {proto.parse_topic(t).store_id for t in menus if t.endswith(customer_id)}


def _device_client(broker, device_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device_id), protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _status(c: mqtt.Client, device_id: str, state: str = "online", *, frames: int | None = None, ts=None) -> None:
    health = None if state == "offline" else proto.Health(camera="ok", fps=10, gallery_size=1, queue_depth=0,
                                                          frames_captured=frames)
    status = proto.Status(device_id=uuid.UUID(device_id), state=state, ts=ts or utcnow(), health=health)
    c.publish(proto.status_topic(device_id), proto.dump_payload(status), qos=1, retain=True).wait_for_publish(5)


def _done(device_id: str, customer_id: str, erasure_id: str | None = None) -> bytes:
    return proto.dump_payload(proto.ErasureDoneEvent(
        event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow(), customer_ids=[uuid.UUID(customer_id)],
        erasure_id=uuid.UUID(erasure_id) if erasure_id else None))


# --- 1. menus cleared at every store -----------------------------------------------------------------
def test_erasure_clears_the_retained_menu_at_every_store_whatever_is_left_to_confirm(sdb, tmp_path):
    """Store A has the only device; store B has none yet. Mina was enrolled at A's door (menu at A), Joon has no
    origin store (menu at A and B). Mina is erased on A's staff page (confirmed at once when the owner agrees),
    Joon on the dashboard and confirmed by A's device: neither menu may stay retained anywhere."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, sdb, broker)
        store_a, store_b = _store(sdb, "a"), _store(sdb, "b")
        device = _device(sdb, store_a)
        mina = _regular(sdb, "Mina Park", origin=(store_a, device))
        joon = _regular(sdb, "Joon Lee")
        with sdb.transaction() as s:
            publish(s, broker.url, catalogue=False)
        menus = _retained_menus(broker)
        assert _menu_stores(menus, mina) == {store_a} and _menu_stores(menus, joon) == {store_a, store_b}

        assert handle_message(sdb, proto.events_topic(device), _done(device, mina)) is Outcome.STORED
        with sdb.transaction() as s:  # the owner confirms the staff page's request (stores.decide_erasure)
            erasure = decide_erasure_request(s, s.scalar(select(ErasureRequest.id)), actor=OWNER_EMAIL, confirm=True)
            assert erasure.completed_at is not None  # the asking device is the only one
        republish_erasures(sdb, settings)
        with sdb.transaction() as s:
            joon_erasure = erase_customer(s, joon, actor=OWNER_EMAIL).id
        republish_erasures(sdb, settings)
        assert handle_message(sdb, proto.events_topic(device), _done(device, joon, joon_erasure)) is Outcome.STORED
        republish_erasures(sdb, settings)

        menus = _retained_menus(broker)
        assert _menu_stores(menus, mina) == set(), "Mina's menu is still retained"
        assert _menu_stores(menus, joon) == set(), "Joon's menu is still retained at the store without a device"
        with sdb.sessions() as s:
            assert all(e.published_at is not None for e in s.scalars(select(Erasure)))
        assert republish_erasures(sdb, settings) == 0  # cleared once: nothing left to send


def test_withdrawal_and_retention_clear_menus_in_a_chain_without_devices(sdb, tmp_path):
    """No device anywhere yet (every erasure is complete at once), but the menus were retained for every store:
    a consent withdrawal and a retention sweep clear them all; a history-only customer sends nothing."""
    from dangol_cloud.web.customers import withdraw_consent

    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, sdb, broker)
        stores = {_store(sdb, "a"), _store(sdb, "b")}
        mina = _regular(sdb, "Mina Park")
        old = _regular(sdb, "Old Regular", created=utcnow() - timedelta(days=800))
        with sdb.transaction() as s:
            s.add(Customer(status="active", source="import", created_at=utcnow() - timedelta(days=800)))
            publish(s, broker.url, catalogue=False)
        menus = _retained_menus(broker)
        assert _menu_stores(menus, mina) == stores and _menu_stores(menus, old) == stores

        with sdb.transaction() as s:
            withdraw_consent(s, s.get(Customer, mina), actor=OWNER_EMAIL)
        with sdb.transaction() as s:
            assert len(run_retention(s, 365)) == 2  # the old regular and the history-only customer
        assert republish_erasures(sdb, settings) == 4  # two menus at two stores; nothing for the history-only one
        menus = _retained_menus(broker)
        assert _menu_stores(menus, mina) == set() and _menu_stores(menus, old) == set()


# --- 2. status at QoS 0: an outage queues only events --------------------------------------------------
class _SmallQueueBroker(MosquittoBroker):
    """Mosquitto with a queue of 20 messages per client (dangol.conf's limit, scaled down)."""

    def _write_config(self):
        conf = super()._write_config()
        conf.write_text(conf.read_text() + "max_queued_messages 20\n")
        return conf


def test_status_reports_during_a_cloud_outage_never_push_events_out_of_the_listeners_queue(sdb, tmp_path):
    with _SmallQueueBroker(tmp_path / "mosquitto") as broker:
        device = _device(sdb, _store(sdb, "a"))
        client_id = f"cloud-{uuid.uuid4().hex[:6]}-listener"
        Listener(sdb, broker.url, client_id=client_id).start().stop()  # its session exists; the cloud goes down
        edge = _device_client(broker, device)
        try:
            start = utcnow() - timedelta(hours=1)
            for i in range(40):  # 20 minutes of 30-s health reports
                _status(edge, device, ts=start + timedelta(seconds=30 * i))
            arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device), ts=utcnow(),
                                         customer_id=None, confidence=None)
            edge.publish(proto.events_topic(device), proto.dump_payload(arrival), qos=1).wait_for_publish(5)
        finally:
            edge.disconnect()
            edge.loop_stop()
        listener = Listener(sdb, broker.url, client_id=client_id).start()
        try:
            assert _wait(lambda: listener.counts[Outcome.STORED] >= 2, 8)  # the arrival and the latest status
        finally:
            listener.stop()
        with sdb.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Visit)) == 1, "the acknowledged arrival was dropped"
            assert s.get(Device, device).state == "online"
    assert dict(proto.device_subscriptions()) == {proto.ALL_DEVICE_EVENTS: 1, proto.ALL_DEVICE_STATUS: 0}
    assert {qos for _t, qos in proto.store_subscriptions(uuid.uuid4())} == {1}  # the edge's own: unchanged


def _conf_value(text: str, key: str) -> int:
    return int(re.search(rf"^{key}\s+(\d+)\s*$", text, re.M).group(1))


def test_broker_configs_queue_a_long_outage_of_events(tmp_path):
    """dangol.conf and the generated dangol-dynsec.conf carry the same queue limits, deep enough for two weeks
    of 20 busy boxes' events (30,000 a day, about 0.5 KB each) and status reports left unqueued."""
    from dangol_cloud.broker_auth import QUEUE_LIMITS, plugin_conf

    shipped = (REPO / "firmware-config" / "mosquitto" / "dangol.conf").read_text()
    generated = plugin_conf(tmp_path / "dynamic-security.json", "/usr/lib/mosquitto_dynamic_security.so")
    for text in (shipped, generated):
        assert _conf_value(text, "max_queued_messages") == QUEUE_LIMITS["max_queued_messages"] >= 14 * 30_000
        assert _conf_value(text, "max_queued_bytes") == QUEUE_LIMITS["max_queued_bytes"] >= 14 * 30_000 * 512
        assert re.search(r"^queue_qos0_messages false$", text, re.M)
    assert "max_queued_messages" in (REPO / "docs" / "mqtt.md").read_text()


# --- 3. erasures re-sent on coming online only, and only the device's own -------------------------------
def test_status_reports_resend_only_unconfirmed_erasures_and_only_when_the_device_comes_online(sdb, tmp_path):
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, sdb, broker)
        store = _store(sdb, "a")
        front, back = _device(sdb, store, "front"), _device(sdb, store, "back (off for the holidays)")
        mina = _regular(sdb, "Mina Park")
        with sdb.transaction() as s:
            erasure_id = erase_customer(s, mina, actor=OWNER_EMAIL).id
        republish_erasures(sdb, settings)
        assert handle_message(sdb, proto.events_topic(front), _done(front, mina, erasure_id)) is Outcome.STORED

        sent: list[str] = []
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        probe.on_subscribe = lambda *a: subscribed.set()
        probe.on_message = lambda c, u, m: sent.append(m.topic)
        probe.connect(broker.host, broker.port)
        probe.loop_start()
        probe.subscribe(proto.erasures_topic(store), qos=1)
        assert subscribed.wait(5)
        listener = Listener(sdb, broker.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}",
                            on_erasures=lambda d: republish_erasures(sdb, settings, device_id=d)).start()
        edges = {d: _device_client(broker, d) for d in (front, back)}
        try:
            def reports(device, n, **kw):
                before = listener.counts[Outcome.STORED]
                for i in range(n):
                    _status(edges[device], device, **kw)
                assert _wait(lambda: listener.counts[Outcome.STORED] >= before + n)
                time.sleep(0.5)

            reports(front, 4, frames=100)  # came online (unknown before), but confirmed already: nothing
            assert sent == []
            reports(back, 4, frames=100)  # came online once: the erasure once
            assert len(sent) == 1
            reports(back, 1, state="offline")
            reports(back, 2, frames=200)  # back online after being offline: once more
            assert len(sent) == 2
            reports(back, 1, frames=5)  # its frame counter went back: the daemon restarted
            assert len(sent) == 3
        finally:
            listener.stop()
            for c in edges.values():
                c.disconnect()
                c.loop_stop()
            probe.disconnect()
            probe.loop_stop()


# --- 4. a removed device's retained status -------------------------------------------------------------
def test_removing_a_device_clears_its_retained_status_and_a_stale_one_is_counted_not_dead_lettered(sdb, tmp_path):
    from dangol_cloud.app import create_app

    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        store = _store(sdb, "a")
        lost, stale = _device(sdb, store, "lost box"), _device(sdb, store, "removed before the fix")
        for device in (lost, stale):
            c = _device_client(broker, device)
            _status(c, device)
            c.disconnect()
            c.loop_stop()
        with sdb.transaction() as s:  # removed the old way: its retained status stays on the broker
            s.delete(s.get(Device, stale))

        add_owner(sdb)
        app = create_app(_settings(tmp_path, sdb, broker), db=sdb, TESTING=True, WTF_CSRF_ENABLED=False)
        client = app.test_client()
        assert client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD}).status_code == 302
        assert client.post(f"/stores/devices/{lost}/delete", data={"confirm": "yes"}).status_code == 302
        with sdb.sessions() as s:
            assert s.get(Device, lost) is None

        got: dict[str, bytes] = {}
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
        probe.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload)) if m.retain else None
        probe.connect(broker.host, broker.port)
        probe.loop_start()
        probe.subscribe(proto.ALL_DEVICE_STATUS, qos=1)
        time.sleep(0.7)
        probe.disconnect()
        probe.loop_stop()
        assert proto.status_topic(lost) not in got, "the removed device's status is still retained"
        assert proto.status_topic(stale) in got

        for _restart in range(2):  # serve restarts: the stale retained status comes back each time
            listener = Listener(sdb, broker.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}").start()
            try:
                assert _wait(lambda: sum(listener.counts.values()) >= 1, 5)
                time.sleep(0.3)
                assert listener.counts[Outcome.UNKNOWN_DEVICE] == 0
                assert listener.counts[Outcome.FORGOTTEN_DEVICE] == 1
            finally:
                listener.stop()
        with sdb.sessions() as s:
            assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0
        # a live (not retained) message of a removed device is still dead-lettered: it is not allowed to talk
        status = proto.Status(device_id=uuid.UUID(stale), state="online", ts=utcnow())
        assert handle_message(sdb, proto.status_topic(stale), proto.dump_payload(status)) is Outcome.UNKNOWN_DEVICE
