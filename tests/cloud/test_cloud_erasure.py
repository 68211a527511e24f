"""Erasure everywhere with a real Mosquitto: a device offline at the time gets it on reconnect (persistent
session, and the re-publish on ``online`` when the broker lost the session), each device confirms, the
audit log records it; erasures started on an edge staff page reach the other stores; retention."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.cli import main as cli
from dangol_cloud.erasure import decide_erasure_request, erase_customer, retention_candidates
from dangol_cloud.events import Listener, handle_message
from dangol_cloud.models import (
    AuditEntry, CatalogueItem, Customer, CustomerOrigin, Device, Erasure, ErasureRequest, Purchase, Store, Visit, utcnow,
)
from dangol_cloud.publishing import publish, republish_erasures
from dangol_cloud.security import mosquitto_hash
from dangol_cloud.settings import ConfigError, Settings, load_settings

from .conftest import add_store_and_device, utc


class Edge:
    """A stand-in for the edge's MQTT client: client id ``dangol-edge-<device>``, persistent session, QoS 1
    subscriptions to its store; answers ``erasures/1`` with ``erasure-done`` as the real daemon does."""

    def __init__(self, broker, device_id: str, store_id: str) -> None:
        self.device_id, self.store_id, self.broker = device_id, store_id, broker
        self.erasures: list[proto.Erasures] = []
        self.got = threading.Event()
        self.client = None

    def connect(self, *, announce: bool = False) -> "Edge":
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dangol-edge-{self.device_id}", clean_session=False,
                        protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe(proto.store_subscriptions(self.store_id))
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        assert subscribed.wait(5), "edge not subscribed"
        self.client = c
        if announce:
            status = proto.Status(device_id=uuid.UUID(self.device_id), state="online", ts=utcnow())
            c.publish(proto.status_topic(self.device_id), proto.dump_payload(status), qos=1, retain=True).wait_for_publish(5)
        return self

    def _on_message(self, client, userdata, msg):
        if msg.topic.endswith("/erasures"):
            erasures = proto.parse_payload(msg.topic, msg.payload)
            self.erasures.append(erasures)
            done = proto.ErasureDoneEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(self.device_id), ts=utcnow(),
                                          erasure_id=erasures.erasure_id, customer_ids=erasures.customer_ids)
            client.publish(proto.events_topic(self.device_id), proto.dump_payload(done), qos=1)
            self.got.set()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _enrolled(db, store_id: str) -> str:
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=cid, display_name="Mina", status="active", source="edge", consent_by="staff:jo",
                       consent_at=utc(2026, 1, 2), consent_text_version="2026-01"))
        s.flush()
        s.add(CustomerOrigin(customer_id=cid, store_id=store_id))
    return cid


def _wait(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _completed(db, erasure_id=None) -> bool:
    with db.sessions() as s:
        query = select(Erasure.completed_at)
        return s.scalar(query if erasure_id is None else query.where(Erasure.id == erasure_id)) is not None


def test_device_offline_at_erasure_time_gets_it_on_reconnect_and_confirms(db, db_url, mosquitto, monkeypatch,
                                                                          tmp_path, capsys):
    store_id, device_id = add_store_and_device(db)
    cid = _enrolled(db, store_id)
    edge = Edge(mosquitto, device_id, store_id).connect()
    edge.disconnect()  # the door device goes offline; its session (QoS 1 subscriptions) stays on the broker
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", mosquitto.url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["erase", cid]) == 0
    assert "erasure messages published" in " ".join(capsys.readouterr().out.split())
    with db.sessions() as s:
        assert s.get(Customer, cid) is None
        erasure = s.scalar(select(Erasure))
        assert erasure.targets == [device_id] and erasure.published_at is not None and erasure.completed_at is None
    listener = Listener(db, mosquitto.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}").start()
    try:
        edge.connect()  # back on: the broker delivers the queued erasure from the persistent session
        assert edge.got.wait(10), "the reconnecting device did not get the erasure"
        assert edge.erasures[0].customer_ids == [uuid.UUID(cid)]
        assert _wait(lambda: _completed(db)), "the device's erasure-done was not recorded"
    finally:
        edge.disconnect()
        listener.stop()
    with db.sessions() as s:
        actions = [(a.action, a.device_id, a.customer_id) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert actions == [("consent-withdrawn", None, cid), ("erasure-requested", None, cid),
                           ("erasure-confirmed", device_id, cid),
                           ("erasure-completed", None, cid)]
        assert all("Mina" not in (a.detail or "") for a in s.scalars(select(AuditEntry)))


def test_device_whose_session_was_lost_gets_the_erasure_when_it_comes_online(db, tmp_path):
    """The broker restarted (no persistence): the queued message is gone. The cloud re-sends unconfirmed
    erasures when the device reports ``online``."""
    from tests.broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=False).start()  # a restart loses sessions
    store_id, device_id = add_store_and_device(db)
    cid = _enrolled(db, store_id)
    settings = Settings(database_url=db.url, mqtt_url=broker.url, cloud_home=tmp_path / "home", _env_file=None)
    listener = None
    try:
        Edge(broker, device_id, store_id).connect().disconnect()
        with db.transaction() as s:
            erase_customer(s, cid, actor="owner@cafe.example")
        assert republish_erasures(db, settings) == 2  # menu clear + erasures/1, queued in the session ...
        port = broker.port
        broker.stop()
        broker.start(port=port)  # ... which this restart loses
        listener = Listener(db, broker.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}",
                            on_erasures=lambda device: republish_erasures(db, settings, device_id=device)).start()
        edge = Edge(broker, device_id, store_id).connect(announce=True)
        try:
            assert edge.got.wait(10), "the device did not get the erasure after coming online"
            assert _wait(lambda: _completed(db))
        finally:
            edge.disconnect()
        with db.sessions() as s:
            erasure = s.scalar(select(Erasure))
            assert erasure.confirmed_by == [device_id] and erasure.last_published_at > erasure.published_at
    finally:
        if listener is not None:
            listener.stop()
        broker.stop()


def test_erasure_is_resent_only_to_stores_that_have_not_confirmed(db, mosquitto):
    store_a, device_a = add_store_and_device(db)
    with db.transaction() as s:
        store_b = Store(name="Harbour", ref="harbour")
        s.add(store_b)
        s.flush()
        device_b = Device(store_id=store_b.id, name="Door", mqtt_username="device-b", mqtt_password_hash=mosquitto_hash("x"))
        s.add(device_b)
        s.flush()
        store_b, device_b = store_b.id, device_b.id
    cid = _enrolled(db, store_a)
    with db.transaction() as s:
        erasure = erase_customer(s, cid, actor="owner")
        erasure_id = erasure.id
    done = proto.ErasureDoneEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_a), ts=utcnow(),
                                  erasure_id=uuid.UUID(erasure_id), customer_ids=[uuid.UUID(cid)])
    assert handle_message(db, proto.events_topic(device_a), proto.dump_payload(done)).value == "stored"
    with db.transaction() as s:
        report = publish(s, mosquitto.url, catalogue=False, menus=False)
    assert report.erasures == 3  # erasures/1 only to store B; its first publish clears the menu at A and B
    assert not _completed(db, erasure_id)
    with db.transaction() as s:  # store B's device is removed: nobody left to wait for
        s.delete(s.get(Device, device_b))
    from dangol_cloud.erasure import complete_if_done, pending_erasures

    with db.transaction() as s:
        assert [complete_if_done(s, e, "owner") for e in pending_erasures(s)] == [True]


def test_erasure_started_on_an_edge_staff_page_is_a_request_an_owner_confirms_for_the_other_devices(db):
    store_a, device_a = add_store_and_device(db)
    with db.transaction() as s:
        other = Device(store_id=store_a, name="Side door", mqtt_username="device-side", mqtt_password_hash="x")
        s.add(other)
        s.flush()
        other = other.id
    cid = _enrolled(db, store_a)
    done = proto.ErasureDoneEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_a), ts=utcnow(),
                                  customer_ids=[uuid.UUID(cid)])  # no erasure_id: the edge started it
    assert handle_message(db, proto.events_topic(device_a), proto.dump_payload(done)).value == "stored"
    with db.transaction() as s:
        assert s.get(Customer, cid) is not None and s.scalar(select(Erasure)) is None  # nothing erased yet
        request = s.scalar(select(ErasureRequest))
        assert (request.device_id, request.customer_id, request.status) == (device_a, cid, "pending")
        decide_erasure_request(s, request.id, actor="owner@cafe.example", confirm=True)
    with db.sessions() as s:
        assert s.get(Customer, cid) is None
        assert s.scalar(select(ErasureRequest.status)) == "confirmed"
        erasure = s.scalar(select(Erasure))
        assert sorted(erasure.targets) == sorted([device_a, other]) and erasure.confirmed_by == [device_a]
        assert erasure.requested_by == "owner@cafe.example" and erasure.completed_at is None


def test_cli_erase_of_an_unknown_customer_is_an_input_error(db_url, monkeypatch, tmp_path, db, capsys):
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    missing = str(uuid.uuid4())
    assert cli(["erase", missing]) == 2 and missing in capsys.readouterr().err


def test_retention_erases_only_customers_not_seen_for_n_days(db, db_url, monkeypatch, tmp_path, capsys):
    store_id, _ = add_store_and_device(db)
    now = utcnow()
    long_ago = now - timedelta(days=400)
    ids = {k: str(uuid.uuid4()) for k in ("gone", "visited", "bought", "new", "old_history")}
    with db.transaction() as s:
        item = CatalogueItem(ref="latte", name="Latte", tags=[])
        s.add(item)
        for key, cid in ids.items():
            s.add(Customer(id=cid, status="active", source="edge" if key != "old_history" else "import",
                           created_at=now if key == "new" else long_ago, external_ref=None))
        s.flush()
        s.add_all([Visit(event_id=str(uuid.uuid4()), customer_id=ids["gone"], ts=long_ago),
                   Visit(event_id=str(uuid.uuid4()), customer_id=ids["visited"], ts=now - timedelta(days=3)),
                   Purchase(customer_id=ids["bought"], item_id=item.id, quantity=1, ts=now - timedelta(days=30),
                            source="pos", idempotency_key="k1"),
                   Purchase(customer_id=ids["old_history"], item_id=item.id, quantity=1, ts=long_ago, source="import",
                            idempotency_key="k2")])
    with db.sessions() as s:
        assert sorted(retention_candidates(s, 365)) == sorted([ids["gone"], ids["old_history"]])
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DANGOL_RETENTION_DAYS", "365")
    assert cli(["retention"]) == 0
    assert "erased 2 customers" in capsys.readouterr().out
    with db.sessions() as s:
        assert {c for c in s.scalars(select(Customer.id))} == {ids["visited"], ids["bought"], ids["new"]}
        erasures = {e.customer_id: e for e in s.scalars(select(Erasure))}
        assert erasures[ids["gone"]].completed_at is None          # the edge may hold templates: devices confirm
        assert erasures[ids["old_history"]].completed_at is not None  # history only: no device ever had it
        assert s.scalar(select(AuditEntry.detail).where(AuditEntry.action == "retention-run")).endswith("erased 2")


@pytest.mark.parametrize("days", ["1096", "5000"])
def test_retention_longer_than_three_years_is_refused_naming_the_setting(monkeypatch, days):
    monkeypatch.setenv("DANGOL_RETENTION_DAYS", days)
    with pytest.raises(ConfigError, match=r"retention_days \(DANGOL_RETENTION_DAYS\).*BIPA"):
        load_settings()


@pytest.mark.parametrize("field,value", [("menu_size", "0"), ("erasure_republish_minutes", "0"),
                                         ("login_max_failures", "0"), ("timezone", "Mars/Olympus")])
def test_out_of_range_settings_are_refused_naming_the_field(monkeypatch, field, value):
    monkeypatch.setenv(f"DANGOL_{field.upper()}", value)
    with pytest.raises(ConfigError, match=rf"{field} \(DANGOL_{field.upper()}\)"):
        load_settings()


def test_serve_background_sweeps_retention_and_resends_unconfirmed_erasures(db, tmp_path, mosquitto):
    """Inside ``serve``: the retention sweep runs at start, and pending erasures are re-sent on the schedule
    without anyone pressing Publish (here every 0.5 s)."""
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    store_id, device_id = add_store_and_device(db)
    stale, kept = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        s.add_all([Customer(id=stale, status="active", source="edge", created_at=utcnow() - timedelta(days=40)),
                   Customer(id=kept, status="active", source="edge")])
    edge = Edge(mosquitto, device_id, store_id).connect()
    settings = Settings(database_url=db.url, mqtt_url=mosquitto.url, cloud_home=tmp_path / "home", retention_days=30,
                        erasure_republish_minutes=0.5 / 60, listen=False, secret_key="k", _env_file=None)
    stop = start_background(create_app(settings, db=db))
    try:
        assert _wait(lambda: _gone(db, stale)), "retention did not run at start"
        assert edge.got.wait(10), "the pending erasure was not re-sent on the schedule"
        assert edge.erasures[0].customer_ids == [uuid.UUID(stale)]
    finally:
        stop()
        edge.disconnect()
    with db.sessions() as s:
        assert s.get(Customer, kept) is not None
        assert s.scalar(select(Erasure.requested_by)) == "retention"


def _gone(db, customer_id: str) -> bool:
    with db.sessions() as s:
        return s.get(Customer, customer_id) is None
