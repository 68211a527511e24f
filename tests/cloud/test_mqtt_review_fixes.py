"""MQTT review fixes on the cloud side, each with a real Mosquitto (one per test, free port) and a fresh SQLite file:

1. an ``enrolment`` event may make a customer active only with a consent record (carried by the event, or already
   stored): a bare ``active`` is dead-lettered, so the real activation with the consent still goes through; the
   listener welcomes a customer (``on_activated``) only when an event actually made them active, once;
2. a *retained* message on a device's events topic is never applied: counted, dead-lettered once and cleared on the
   broker (an empty retained payload); an empty payload on an events topic is a dead letter unless it is the cloud's
   own clear of a removed device's topic; removing a device clears its events topic too;
3. a device's ``status_at`` is the time the cloud received its status, and reports apply in the order they arrive:
   a door whose clock is behind, or stepped back after a power cut, shows online and its come-online erasure re-send
   fires; a retained status (online or offline) delivered on (re)subscription does not move the last-seen time;
4. an ``erasure-done`` answering an erasure the cloud issued is accepted whatever the door's clock says (recorded at
   the time received): the door deleted it after the PUBACK, a refusal would leave the erasure pending for ever.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.events import Listener, Outcome, handle_message
from dangol_cloud.models import (
    Customer, CustomerOrigin, DeadLetter, Device, DeviceEvent, Erasure, ErasureRequest, utcnow,
)
from dangol_cloud.settings import Settings
from dangol_cloud.web.devices import presence
from tests.broker import MosquittoBroker

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device
from .test_device_trust import _wait


# --- helpers -----------------------------------------------------------------------------------------
@pytest.fixture
def sdb(sqlite_url):
    database = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def chain(sdb):
    """``(store id, device id)``."""
    return add_store_and_device(sdb)


@pytest.fixture
def broker(tmp_path):
    with MosquittoBroker(tmp_path / "mosquitto") as b:
        yield b


def _door(broker, device_id: str, *, will: bool = False) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device_id), protocol=mqtt.MQTTv5)
    if will:
        topic, payload = proto.last_will(device_id)
        c.will_set(topic, payload, qos=1, retain=True)
    c.connect(broker.host, broker.port, keepalive=5)
    c.loop_start()
    return c


def _send(c: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    info = c.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(5)
    assert info.is_published()


def _close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def _retained(broker, topic: str) -> bytes | None:
    """The payload the broker retains on ``topic`` (what a new subscriber gets), or None."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.__setitem__("payload", bytes(m.payload)) if m.retain else None
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe(topic, qos=1)
        assert subscribed.wait(5)
        time.sleep(0.4)  # retained messages follow the SUBACK
    finally:
        _close(c)
    return got.get("payload")


def _enrolment(device_id: str, customer_id, status: str, *, consent: bool = False, name: str | None = None) -> bytes:
    record = proto.Consent(recorded_by="staff:jo", recorded_at=utcnow(), text_version="2026-01") if consent else None
    return proto.dump_payload(proto.EnrolmentEvent(
        event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow(), customer_id=customer_id, status=status,
        consent=record, display_name=name))


def _erasure_done(device_id: str, customer_id: str, erasure_id: str | None = None, *, ts=None) -> bytes:
    return proto.dump_payload(proto.ErasureDoneEvent(
        event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=ts or utcnow(),
        customer_ids=[uuid.UUID(customer_id)], erasure_id=uuid.UUID(erasure_id) if erasure_id else None))


def _regular(db: Database, store_id: str, device_id: str) -> str:
    """An active, consenting customer enrolled on ``device_id``."""
    with db.transaction() as s:
        customer = Customer(display_name="Mina Park", status="active", source="edge", consent_at=utcnow(),
                            consent_by="staff:jo", consent_text_version="2026-01")
        s.add(customer)
        s.flush()
        s.add(CustomerOrigin(customer_id=customer.id, store_id=store_id, device_id=device_id, created_at=utcnow()))
        return customer.id


def _dead_letters(db: Database) -> list[tuple[str, str]]:
    with db.sessions() as s:
        return [(d.kind, d.reason) for d in s.scalars(select(DeadLetter).order_by(DeadLetter.id))]


def _handled(listener: Listener) -> int:
    return sum(listener.counts.values())


def _aware(at):
    return at if at is None or at.tzinfo else at.replace(tzinfo=timezone.utc)


# --- 1. an activation needs a consent record ----------------------------------------------------------
def test_an_activation_without_consent_is_refused_and_the_real_one_goes_through_welcomed_once(sdb, chain, broker):
    _, device = chain
    activated: list[str] = []
    listener = Listener(sdb, broker.url, client_id="cloud-listener", on_activated=activated.append).start()
    door = _door(broker, device)
    topic = proto.events_topic(device)
    mina, stranger = uuid.uuid4(), uuid.uuid4()
    try:
        _send(door, topic, _enrolment(device, mina, "pending"))
        for _ in range(3):  # a buggy or stolen box: "active" with neither consent nor name
            _send(door, topic, _enrolment(device, mina, "active"))
        _send(door, topic, _enrolment(device, stranger, "active"))  # a new id, straight to active
        _send(door, topic, _enrolment(device, mina, "active", consent=True, name="Mina"))  # staff record consent
        assert _wait(lambda: _handled(listener) == 6)
        for _ in range(3):  # re-sent "active" of an active, consenting customer: stored, no second welcome
            _send(door, topic, _enrolment(device, mina, "active"))
        assert _wait(lambda: _handled(listener) == 9)
        time.sleep(0.3)
    finally:
        _close(door)
        listener.stop()
    assert listener.counts[Outcome.REFUSED] == 4
    assert listener.counts[Outcome.STORED] == 5
    with sdb.sessions() as s:
        customer = s.get(Customer, str(mina))
        assert customer.status == "active" and customer.consent_at is not None
        assert customer.consent_by == "staff:jo" and customer.consent_text_version == "2026-01"
        assert customer.display_name == "Mina"
        assert s.get(Customer, str(stranger)) is None
    letters = _dead_letters(sdb)
    assert len(letters) == 4 and all(kind == "refused" and "consent" in reason for kind, reason in letters)
    assert activated == [str(mina)], "on_activated must run once, when the customer became active"


def test_a_pending_customer_with_a_consent_on_record_may_be_activated_without_one(sdb, chain):
    """Consent recorded on the dashboard for a pending sign-up (``pending`` + consent): the door's later ``active``
    carries none and is fine; the customer becomes active and is welcomed."""
    _, device = chain
    topic, mina = proto.events_topic(device), uuid.uuid4()
    activated: list[str] = []
    assert handle_message(sdb, topic, _enrolment(device, mina, "pending")) is Outcome.STORED
    with sdb.transaction() as s:
        customer = s.get(Customer, str(mina))
        customer.consent_at, customer.consent_text_version = utcnow(), "2026-01"
    assert handle_message(sdb, topic, _enrolment(device, mina, "active"), activated=activated.append) is Outcome.STORED
    assert handle_message(sdb, topic, _enrolment(device, mina, "active"), activated=activated.append) is Outcome.STORED
    assert activated == [str(mina)]
    with sdb.sessions() as s:
        assert s.get(Customer, str(mina)).status == "active"


# --- 2. retained messages on events topics ---------------------------------------------------------------
def test_a_retained_event_is_never_applied_but_dead_lettered_once_and_cleared(sdb, chain, broker):
    """A retained erasure request used to come back at every listener restart, and once its ``device_events`` row
    was pruned it was applied again: a request the owner dismissed was back."""
    store, device = chain
    mina = _regular(sdb, store, device)
    topic = proto.events_topic(device)
    door = _door(broker, device)
    _send(door, topic, _erasure_done(device, mina), retain=True)
    _close(door)
    assert _retained(broker, topic) is not None

    listener = Listener(sdb, broker.url, client_id="cloud-listener").start()
    try:
        assert _wait(lambda: _handled(listener) == 1, 5)
        time.sleep(0.3)
    finally:
        listener.stop()
    assert listener.counts[Outcome.RETAINED] == 1 and listener.retained_cleared == 1
    with sdb.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ErasureRequest)) == 0, "a retained event was applied"
        assert s.scalar(select(func.count()).select_from(DeviceEvent)) == 0
    letters = _dead_letters(sdb)
    assert len(letters) == 1 and letters[0][0] == "retained" and "retained" in letters[0][1]
    assert _retained(broker, topic) is None, "the retained event was not cleared on the broker"

    again = Listener(sdb, broker.url, client_id="cloud-listener").start()  # serve restarts: nothing comes back
    try:
        time.sleep(0.8)
    finally:
        again.stop()
    assert _handled(again) == 0
    assert len(_dead_letters(sdb)) == 1


def test_a_retained_event_published_while_the_listener_runs_is_refused_and_cleared_a_live_one_applied(
        sdb, chain, broker):
    store, device = chain
    mina = _regular(sdb, store, device)
    topic = proto.events_topic(device)
    listener = Listener(sdb, broker.url, client_id="cloud-listener").start()
    door = _door(broker, device)
    try:
        _send(door, topic, _erasure_done(device, mina), retain=True)
        assert _wait(lambda: _handled(listener) == 1)
        assert listener.counts[Outcome.RETAINED] == 1
        assert _wait(lambda: _retained(broker, topic) is None, 5)
        _send(door, topic, _erasure_done(device, mina))  # the same request, sent as the edge sends it
        assert _wait(lambda: _handled(listener) == 2)
        time.sleep(0.3)
    finally:
        _close(door)
        listener.stop()
    assert listener.counts[Outcome.STORED] == 1
    assert _handled(listener) == 2, "the listener received its own clear of the events topic"
    with sdb.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ErasureRequest)) == 1
    assert [kind for kind, _ in _dead_letters(sdb)] == ["retained"]


def test_the_same_retained_message_is_dead_lettered_once_even_if_it_comes_back(sdb, chain):
    """A clear the broker did not take (the connection dropped): the same retained message at the next start is
    counted again, not kept twice."""
    _, device = chain
    topic = proto.events_topic(device)
    bogus = b'{"schema": "event/1", "kind": "bogus"}'
    for _ in range(3):
        assert handle_message(sdb, topic, bogus, retained=True) is Outcome.RETAINED
    assert handle_message(sdb, topic, b"not json", retained=True) is Outcome.RETAINED
    assert [kind for kind, _ in _dead_letters(sdb)] == ["retained", "retained"]


def test_an_empty_payload_on_an_events_topic_is_a_dead_letter_unless_the_device_is_gone(sdb, chain):
    """An empty retained payload is a legitimate clear on status and menu topics (the cloud clears those); on an
    events topic only the cloud's own clear of a removed device's topic is expected."""
    _, device = chain
    assert handle_message(sdb, proto.events_topic(device), b"") is Outcome.INVALID
    # the broker never hands over an empty retained message; flagged retained it is a live clear (retain as
    # published) by the device itself: not one of its rights either, and nothing to clear
    assert handle_message(sdb, proto.events_topic(device), b"", retained=True) is Outcome.INVALID
    assert handle_message(sdb, proto.status_topic(device), b"") is Outcome.IGNORED
    removed = str(uuid.uuid4())
    assert handle_message(sdb, proto.events_topic(removed), b"") is Outcome.FORGOTTEN_DEVICE
    assert handle_message(sdb, proto.status_topic(removed), b"") is Outcome.IGNORED
    letters = _dead_letters(sdb)
    assert [kind for kind, _ in letters] == ["invalid", "invalid"]
    assert all("empty" in reason for _, reason in letters)


def test_removing_a_device_clears_its_retained_events_and_status(sdb, chain, broker, tmp_path, monkeypatch):
    from dangol_cloud import broker_auth
    from dangol_cloud.app import create_app

    monkeypatch.setattr(broker_auth, "revoke_device_login", lambda *a, **k: None)  # no dynamic-security plugin here
    _, device = chain
    door = _door(broker, device)
    _send(door, proto.events_topic(device), b'{"schema": "event/1", "kind": "bogus"}', retain=True)
    status = proto.Status(device_id=uuid.UUID(device), state="online", ts=utcnow())
    _send(door, proto.status_topic(device), proto.dump_payload(status), retain=True)
    _close(door)
    assert _retained(broker, proto.events_topic(device)) is not None

    add_owner(sdb)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sdb.url, mqtt_url=broker.url, secret_key="k",
                        _env_file=None)
    app = create_app(settings, db=sdb, TESTING=True, WTF_CSRF_ENABLED=False)
    client = app.test_client()
    assert client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD}).status_code == 302
    assert client.post(f"/stores/devices/{device}/delete", data={"confirm": "yes"}).status_code == 302
    assert _retained(broker, proto.events_topic(device)) is None, "the removed device's retained event stays"
    assert _retained(broker, proto.status_topic(device)) is None

    listener = Listener(sdb, broker.url, client_id="cloud-listener").start()
    try:
        time.sleep(0.8)
    finally:
        listener.stop()
    assert _handled(listener) == 0
    assert _dead_letters(sdb) == []


# --- 3. status: the cloud's receive time, in arrival order -------------------------------------------------
def test_status_at_is_the_time_received_and_a_door_whose_clock_stepped_back_comes_online(sdb, chain, broker):
    _, device = chain
    woke: list[str] = []
    listener = Listener(sdb, broker.url, client_id="cloud-listener", on_erasures=woke.append).start()

    def report(c, ts, frames):
        st = proto.Status(device_id=uuid.UUID(device), state="online", ts=ts,
                          health=proto.Health(camera="ok", fps=10, gallery_size=1, queue_depth=0,
                                              frames_captured=frames))
        _send(c, proto.status_topic(device), proto.dump_payload(st), retain=True)

    def stored():
        with sdb.sessions() as s:
            d = s.get(Device, device)
            return d.state, _aware(d.status_at), d.health

    try:
        door = _door(broker, device, will=True)
        report(door, utcnow() - timedelta(minutes=10), 5000)  # a clock 10 minutes behind
        assert _wait(lambda: stored()[0] == "online")
        state, at, health = stored()
        assert abs((at - utcnow()).total_seconds()) < 5, "status_at is the door's clock, not the time received"
        assert presence(state, at, None)["state"] == "online"
        assert -610 < health["clock_offset_s"] < -590
        assert _wait(lambda: woke == [device])

        door.socket().shutdown(2)  # power cut: no DISCONNECT, the broker publishes the last will
        door.loop_stop()
        assert _wait(lambda: stored()[0] == "offline", 15)
        door = _door(broker, device, will=True)  # reboot with fake-hwclock: 20 minutes behind the last report
        before = utcnow()
        for n in range(3):
            report(door, before - timedelta(minutes=30) + timedelta(seconds=n), 10 + n)
        assert _wait(lambda: stored()[2]["frames_captured"] == 12)
        state, at, _ = stored()
        assert state == "online" and at >= before - timedelta(seconds=1)
        assert _wait(lambda: woke == [device, device]), "the come-online erasure re-send did not fire"
        _close(door)
    finally:
        listener.stop()
    assert listener.counts[Outcome.IGNORED] == 0


def test_a_retained_status_on_subscription_does_not_move_the_last_seen_time(sdb, chain, broker):
    """The box went off while the cloud was down: at the cloud's start the broker hands over the retained last will.
    The box is offline, but it was last heard from days ago, not now. Another box's retained ``online`` does not date
    it now either (the broker's last stored report: a box dropped without its last will leaves one behind,
    test_mqtt_review_fixes2.py); its next live report does."""
    store, device = chain
    with sdb.transaction() as s:
        other = Device(store_id=store, name="Back door", mqtt_username=f"device-{uuid.uuid4()}",
                       mqtt_password_hash="x")
        s.add(other)
        s.flush()
        other = other.id
    long_ago = utcnow() - timedelta(days=3)
    with sdb.transaction() as s:
        for d in (s.get(Device, device), s.get(Device, other)):
            d.state, d.status_at = "online", long_ago
    door = _door(broker, device)
    _send(door, proto.status_topic(device), proto.last_will(device)[1], retain=True)
    _close(door)
    back = _door(broker, other)
    status = proto.Status(device_id=uuid.UUID(other), state="online", ts=utcnow() - timedelta(hours=5))
    _send(back, proto.status_topic(other), proto.dump_payload(status), retain=True)
    listener = Listener(sdb, broker.url, client_id="cloud-listener").start()
    try:
        assert _wait(lambda: _handled(listener) == 2, 5)
    finally:
        listener.stop()
        _close(back)
    with sdb.sessions() as s:
        d = s.get(Device, device)
        assert d.state == "offline"
        assert abs((_aware(d.status_at) - long_ago).total_seconds()) < 1
        d = s.get(Device, other)
        assert d.state == "online" and abs((_aware(d.status_at) - long_ago).total_seconds()) < 1
        assert "clock_offset_s" not in (d.health or {})


# --- 4. a confirmation from a door whose clock is far ahead ---------------------------------------------
def test_an_erasure_confirmation_is_accepted_whatever_the_door_clock_says(sdb, chain):
    _, device = chain
    customer = str(uuid.uuid4())
    with sdb.transaction() as s:
        erasure = Erasure(customer_id=customer, requested_by="owner", requested_at=utcnow(), targets=[device],
                          confirmed_by=[])
        s.add(erasure)
        s.flush()
        erasure_id = erasure.id
    topic = proto.events_topic(device)
    ahead = utcnow() + timedelta(hours=25)
    arrival = proto.dump_payload(proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device), ts=ahead))
    assert handle_message(sdb, topic, arrival) is Outcome.REFUSED  # other events keep the clock check
    done = _erasure_done(device, customer, erasure_id, ts=ahead)
    assert handle_message(sdb, topic, done) is Outcome.STORED
    with sdb.sessions() as s:
        erasure = s.get(Erasure, erasure_id)
        assert erasure.confirmed_by == [device] and erasure.completed_at is not None
        (row,) = s.scalars(select(DeviceEvent)).all()
        assert abs((_aware(row.ts) - utcnow()).total_seconds()) < 5
    # a confirmation of an erasure never issued is still refused, whatever its clock
    assert handle_message(sdb, topic, _erasure_done(device, customer, str(uuid.uuid4()), ts=ahead)) \
        is Outcome.REFUSED
    assert json.loads(done)["ts"].startswith(ahead.date().isoformat())
