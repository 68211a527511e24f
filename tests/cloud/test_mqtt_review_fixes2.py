"""MQTT review fixes, second round; each test was written to fail before its fix.

1. An arrival and an erasure of the same customer serialise on the customer row (PostgreSQL: the erasure locks it
   ``FOR UPDATE`` before any scrub, the arrival reads it ``FOR SHARE``): an arrival applied while an erasure (or a
   retention sweep) is in progress waits for it and is stored scrubbed, never with the erased customer's id; an
   erasure meeting an arrival in progress waits for its commit and then scrubs it; a retention candidate seen by
   that arrival is kept. An ``IntegrityError`` is a duplicate only when it is a unique violation on the event's
   ``event_id``; any other (a visit's customer erased under it) is applied again as what it now is, and a second
   failure is dead-lettered — never acknowledged as a duplicate with nothing stored. The interleavings are forced
   with monkeypatched waits and threads, and "blocked" is read from PostgreSQL's ``pg_stat_activity``.
2. Mosquitto's dynamic-security plugin drops a box whose password was replaced *without* its last will: the cloud
   publishes the retained ``offline`` itself, so the owner sees the box offline (also after a listener restart)
   until the real edge client reconnects with its new password; and a retained ``online`` (the broker's last stored
   report) no longer dates a device now. A removed device's login is dropped the same way; its retained status is
   cleared.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import timedelta, timezone
from html import unescape

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, text
from sqlalchemy import exc as sa_exc

import dangol_cloud.device_events as device_events
import dangol_cloud.erasure as erasure_mod
import dangol_protocol as proto
from dangol_cloud.device_status import apply_status
from dangol_cloud.erasure import erase_customer, run_retention
from dangol_cloud.events import Listener, Outcome, handle_message
from dangol_cloud.models import Customer, CustomerOrigin, DeadLetter, Device, DeviceEvent, Visit, utcnow
from dangol_cloud.web.devices import presence
from tests.broker import MosquittoBroker

from .conftest import add_store_and_device
from .test_device_trust import CLOUD_PW, _handled, _wait
from .test_security_review_fixes import _broker_site, _owner, _remove
from .test_web_hardening import csrf_of

HEALTH = proto.Health(camera="ok", fps=9.0, gallery_size=2, queue_depth=0)


# --- helpers -----------------------------------------------------------------------------------------------------
class _Run(threading.Thread):
    """``fn()`` on its own thread; ``result`` or ``error`` once ``done`` is set."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error, self.done = fn, None, None, threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> object:
        self.join(30)
        assert self.done.is_set(), "still running after 30 s"
        return self.result


def _until(predicate, timeout: float = 15.0) -> bool:
    """Poll ``predicate`` (a state the test cannot be told of, such as a lock wait) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _waiting_on_a_lock(db) -> bool:
    """Whether a session of this test's PostgreSQL database is waiting for a lock (a row lock, here)."""
    with db.engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'")))


def _pause(monkeypatch, module, name: str, *, after: bool = False, once: bool = False):
    """Make ``module.name`` stop before (or ``after``) calling the real one, until the test says go; returns
    ``(reached, go)`` events. ``once``: only its first call stops."""
    reached, go = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args):
        stop = not (once and reached.is_set())
        answer = real(*args) if after else None
        if stop:
            reached.set()
            assert go.wait(20)
        return answer if after else real(*args)

    monkeypatch.setattr(module, name, paused)
    return reached, go


def _customer(db, store: str, device: str, *, created_days_ago: int = 0) -> str:
    with db.transaction() as s:
        c = Customer(display_name="Mina Park", status="active", source="edge", consent_at=utcnow(),
                     consent_by="staff:jo", consent_text_version="2026-01",
                     created_at=utcnow() - timedelta(days=created_days_ago))
        s.add(c)
        s.flush()
        s.add(CustomerOrigin(customer_id=c.id, store_id=store, device_id=device, created_at=c.created_at))
        return c.id


def _arrival(device: str, customer_id: str, event_id: uuid.UUID | None = None) -> tuple[uuid.UUID, bytes]:
    event_id = event_id or uuid.uuid4()
    return event_id, proto.dump_payload(proto.ArrivalEvent(
        event_id=event_id, device_id=uuid.UUID(device), ts=utcnow(), customer_id=uuid.UUID(customer_id),
        confidence=0.91, shown_items=["latte", "scone"]))


def _erase(db, customer_id: str) -> None:
    with db.transaction() as s:
        erase_customer(s, customer_id, actor="owner@cafe.example")


def _sweep(db) -> list[str]:
    with db.transaction() as s:
        return run_retention(s, 365)


def _stored(db, event_id: uuid.UUID) -> tuple[dict | None, Visit | None]:
    with db.sessions() as s:
        row = s.get(DeviceEvent, str(event_id))
        visit = s.scalar(select(Visit).where(Visit.event_id == str(event_id)))
        return (row.payload if row is not None else None), visit


def _assert_stored_scrubbed(db, event_id: uuid.UUID, customer_id: str) -> None:
    payload, visit = _stored(db, event_id)
    assert payload is not None and visit is not None, "the arrival was acknowledged but not stored"
    assert customer_id not in json.dumps(payload), f"the erased customer's id kept in device_events: {payload}"
    assert payload.get("scrubbed") is True and "shown_items" not in payload and "confidence" not in payload
    assert visit.customer_id is None


# --- 1. an arrival and an erasure of the same customer ----------------------------------------------------------
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_arrival_during_an_erasure_waits_for_it_and_is_stored_scrubbed(db, monkeypatch):
    """The erasure has scrubbed device_events and is busy rewriting saved models when the arrival comes."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    in_models, release = _pause(monkeypatch, erasure_mod, "scrub_saved_models")
    eraser = _Run(lambda: _erase(db, cid))
    assert in_models.wait(10)
    event_id, payload = _arrival(device, cid)
    arrival = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert _until(lambda: arrival.done.is_set() or _waiting_on_a_lock(db))
    release.set()
    eraser.finish()
    assert eraser.error is None
    assert arrival.finish() is Outcome.STORED, arrival.error
    _assert_stored_scrubbed(db, event_id, cid)
    with db.sessions() as s:
        assert s.get(Customer, cid) is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_erasure_during_an_arrival_waits_for_its_commit_and_scrubs_it(db, monkeypatch):
    """The arrival has checked that the customer exists; the erasure comes before it commits. Before: the erasure
    went through, the visit's insert failed its foreign key and the arrival was acknowledged as a duplicate."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    checked, go = _pause(monkeypatch, device_events, "_gone", after=True)  # it read the customer: still there
    event_id, payload = _arrival(device, cid)
    arrival = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert checked.wait(10)
    eraser = _Run(lambda: _erase(db, cid))
    assert _until(lambda: eraser.done.is_set() or _waiting_on_a_lock(db))
    go.set()
    assert arrival.finish() is Outcome.STORED, arrival.error
    eraser.finish()
    assert eraser.error is None
    _assert_stored_scrubbed(db, event_id, cid)  # stored with the id, then scrubbed and unlinked by the erasure


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_arrival_during_a_retention_sweep_waits_for_it_and_is_stored_scrubbed(db, monkeypatch):
    """run_retention erases the whole batch first and scrubs device events only after its loop."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device, created_days_ago=400)
    in_scrub, release = _pause(monkeypatch, erasure_mod, "scrub_device_events")  # called after the erase loop

    sweeper = _Run(lambda: _sweep(db))
    assert in_scrub.wait(10)
    event_id, payload = _arrival(device, cid)
    arrival = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert _until(lambda: arrival.done.is_set() or _waiting_on_a_lock(db))
    release.set()
    assert sweeper.finish() == [cid], sweeper.error
    assert arrival.finish() is Outcome.STORED, arrival.error
    _assert_stored_scrubbed(db, event_id, cid)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_retention_candidate_whose_arrival_commits_while_the_sweep_waits_is_kept(db, monkeypatch):
    """A regular back after 400 days walks in while the daily sweep starts: the sweep waits for the arrival and
    does not erase a customer it now sees."""
    store, device = add_store_and_device(db)
    back = _customer(db, store, device, created_days_ago=400)
    gone_for_good = _customer(db, store, device, created_days_ago=400)
    checked, go = _pause(monkeypatch, device_events, "_gone", after=True)  # it read the customer: still there
    event_id, payload = _arrival(device, back)
    arrival = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert checked.wait(10)

    sweeper = _Run(lambda: _sweep(db))
    assert _until(lambda: sweeper.done.is_set() or _waiting_on_a_lock(db))
    go.set()
    assert arrival.finish() is Outcome.STORED, arrival.error
    assert sweeper.finish() == [gone_for_good], sweeper.error
    payload_kept, visit = _stored(db, event_id)
    with db.sessions() as s:
        assert s.get(Customer, back) is not None and s.get(Customer, gone_for_good) is None
    assert visit.customer_id == back and payload_kept["customer_id"] == back


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_an_arrival_whose_customer_was_erased_under_it_is_applied_again_not_taken_for_a_duplicate(db, monkeypatch):
    """The arrival decided on a read made before the erasure's commit (SQLite: its reads are not locked): the visit's
    foreign key fails. That IntegrityError is not a duplicate: the arrival is applied again, as an erased customer's
    (stored scrubbed), and acknowledged as stored."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    _erase(db, cid)
    real, calls = device_events._gone, []

    def stale_then_real(session, customer_id):
        calls.append(customer_id)
        return False if len(calls) == 1 else real(session, customer_id)

    monkeypatch.setattr(device_events, "_gone", stale_then_real)
    event_id, payload = _arrival(device, cid)
    assert handle_message(db, proto.events_topic(device), payload) is Outcome.STORED
    assert len(calls) == 2
    _assert_stored_scrubbed(db, event_id, cid)
    # the stored event is now a duplicate like any other
    assert handle_message(db, proto.events_topic(device), payload) is Outcome.DUPLICATE


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_an_integrity_error_that_comes_back_is_dead_lettered_never_a_silent_duplicate(db, monkeypatch):
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    _erase(db, cid)
    monkeypatch.setattr(device_events, "_gone", lambda session, customer_id: False)  # a bug: always stale
    event_id, payload = _arrival(device, cid)
    assert handle_message(db, proto.events_topic(device), payload) is Outcome.ERROR
    assert _stored(db, event_id) == (None, None)
    with db.sessions() as s:
        (letter,) = s.scalars(select(DeadLetter)).all()
    assert letter.kind == "error" and "refused it twice" in letter.reason and cid not in letter.reason


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_concurrent_copy_of_the_same_arrival_is_still_a_duplicate(db, monkeypatch):
    """The broker redelivers an event while the first delivery is being applied (a listener restart): the copy
    that loses the race is acknowledged as a duplicate, and the event is stored once."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    checked, go = _pause(monkeypatch, device_events, "_gone", after=True, once=True)  # the first delivery only
    event_id, payload = _arrival(device, cid)
    first = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert checked.wait(10)
    assert handle_message(db, proto.events_topic(device), payload) is Outcome.STORED
    go.set()
    assert first.finish() is Outcome.DUPLICATE, first.error
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(DeviceEvent)) == 1
        assert s.scalar(select(func.count()).select_from(Visit).where(Visit.customer_id == cid)) == 1
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_only_a_unique_violation_on_the_event_id_counts_as_a_duplicate(db):
    from dangol_cloud.event_store import duplicate_event_id

    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    event_id = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(DeviceEvent(event_id=event_id, device_id=device, kind="arrival", ts=utcnow(), payload={}))
        s.add(Visit(event_id=event_id, customer_id=cid, device_id=device, store_id=store, ts=utcnow(), shown_items=[]))

    def error_of(*rows) -> sa_exc.IntegrityError:
        with pytest.raises(sa_exc.IntegrityError) as caught, db.transaction() as s:
            s.add_all(rows)
        return caught.value

    other = str(uuid.uuid4())
    assert duplicate_event_id(error_of(DeviceEvent(event_id=event_id, device_id=device, kind="arrival", ts=utcnow(),
                                                   payload={})))
    assert duplicate_event_id(error_of(Visit(event_id=event_id, device_id=device, ts=utcnow(), shown_items=[])))
    assert not duplicate_event_id(error_of(Visit(event_id=other, customer_id=str(uuid.uuid4()), device_id=device,
                                                 ts=utcnow(), shown_items=[])))  # a foreign key
    assert not duplicate_event_id(error_of(Customer(id=cid, status="pending", source="edge")))  # another unique key


# --- 2. a box dropped without its last will ----------------------------------------------------------------------
def _state(db, device_id: str) -> tuple[str | None, object]:
    with db.sessions() as s:
        d = s.get(Device, device_id)
        at = d.status_at
        return d.state, (at if at is None or at.tzinfo else at.replace(tzinfo=timezone.utc))


def _retained_status(broker, device_id: str, *, user: str | None = None, password: str | None = None) -> dict | None:
    """The retained status the broker hands a new subscriber, or None: a marker published after the SUBACK comes
    back after any retained message, so no fixed wait is needed."""
    got: list = []
    marker = f"dangol/v1/tests/{uuid.uuid4().hex}"
    subscribed, done = threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)

    def on_message(client, userdata, message):
        if message.topic == marker:
            done.set()
        elif message.retain and message.payload:
            got.append(json.loads(message.payload))

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe([(proto.status_topic(device_id), 1), (marker, 1)])
        assert subscribed.wait(5)
        c.publish(marker, b"x", qos=1).wait_for_publish(5)
        assert done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[-1] if got else None


def test_a_retained_status_never_dates_the_device_now():
    """A retained report is the broker's last stored one, sent at an unknown time: ``online`` as ``offline``."""
    before = utcnow() - timedelta(hours=3)
    status = proto.Status(device_id=uuid.uuid4(), state="online", ts=utcnow(), health=HEALTH)
    for state_at in (before, None):
        device = Device(state="online", status_at=state_at)
        apply_status(device, status, retained=True)
        assert device.state == "online" and device.status_at == state_at
    device = Device(state="online", status_at=before)
    apply_status(device, status)  # a live report dates it
    assert (utcnow() - device.status_at).total_seconds() < 5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_box_gone_with_online_retained_is_not_shown_online_after_a_listener_restart(db, tmp_path):
    """The broker retains ``online`` of a box that is gone (dropped without its last will, or died while the broker
    was down): every listener (re)subscription used to date it now — "online, last seen just now"."""
    _, device = add_store_and_device(db)
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        box = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device),
                          protocol=mqtt.MQTTv5)
        box.connect(broker.host, broker.port)
        box.loop_start()
        online = proto.Status(device_id=uuid.UUID(device), state="online", ts=utcnow(), health=HEALTH)
        box.publish(proto.status_topic(device), proto.dump_payload(online), qos=1, retain=True).wait_for_publish(5)
        box.disconnect()  # no last will: the broker keeps retaining "online"
        box.loop_stop()
        three_hours_ago = utcnow() - timedelta(hours=3)
        with db.transaction() as s:
            d = s.get(Device, device)
            d.state, d.status_at = "online", three_hours_ago
        for _restart in range(2):
            listener = Listener(db, broker.url, client_id="cloud-listener").start()
            try:
                assert _wait(lambda: _handled(listener) >= 1, 5)
            finally:
                listener.stop()
            state, at = _state(db, device)
            assert state == "online" and abs((at - three_hours_ago).total_seconds()) < 1, at
            shown = presence(state, at, None)
            assert shown["state"] == "silent" and shown["label"] == "not heard from"


def _edge(broker, chain, password: str, home):
    """The edge's own MQTT client for device A, logged in with ``password``, started."""
    from dangol_edge.config import MQTTConfig
    from dangol_edge.crypto import FieldCipher, new_key, parse_key
    from dangol_edge.state import StateStore
    from dangol_edge.sync import MQTTSync

    state = StateStore(home / "state.sqlite", cipher=FieldCipher(parse_key(new_key(), "t"))).open()
    sync = MQTTSync(MQTTConfig(url=broker.url_as(chain.user_a, password), keepalive_s=5, reconnect_min_s=1,
                               reconnect_max_s=2), uuid.UUID(chain.device_a), uuid.UUID(chain.store_a), state)
    sync.start()
    return sync, state


def _report_online(sync) -> None:
    """What the edge's housekeeping does after each connection: ``online`` with health, at once."""
    assert _wait(sync.connected.is_set), "the box could not connect"
    assert sync.take_status_due()
    sync.publish_status(HEALTH)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_new_password_shows_the_box_offline_until_it_reconnects_with_it(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    device = chain.device_a
    cloud_url = broker.url_as("cloud", CLOUD_PW)
    listener = Listener(db, cloud_url, client_id="cloud-listener").start()
    box, box_state = _edge(broker, chain, "pw-a", tmp_path / "edge-old")
    try:
        _report_online(box)
        assert _wait(lambda: _state(db, device)[0] == "online")
        owner = _owner(app)
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))
        page = unescape(owner.post(f"/stores/devices/{device}/password",
                                   data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True))
        password = re.search(r'id="mqtt-password">([^<]+)<', page).group(1)
        assert "the old one no longer works" in page
        assert _wait(lambda: not box.connected.is_set()), "the box was not dropped"
        assert _wait(lambda: _state(db, device)[0] == "offline", 5), "the dropped box is still online on the cloud"
        assert _retained_status(broker, device, user="cloud", password=CLOUD_PW) is None  # cleared, not faked
        shown = owner.get("/stores/devices/status.json").get_json()["devices"][device]
        assert shown["state"] == "offline" and shown["label"] == "offline"
        listener.stop()  # a deploy restarts serve: the broker now hands over "offline"
        listener = Listener(db, cloud_url, client_id="cloud-listener").start()
        time.sleep(1.0)  # nothing retained comes back: nothing to wait for, a moment to be sure of it
        assert _state(db, device)[0] == "offline"
        box.stop()  # it kept trying the old password, refused
        box_state.close()
        box, box_state = _edge(broker, chain, password, tmp_path / "edge-new")  # the box gets its new password
        _report_online(box)
        assert _wait(lambda: _state(db, device)[0] == "online")
        state, at = _state(db, device)
        assert (utcnow() - at).total_seconds() < 10
        shown = owner.get("/stores/devices/status.json").get_json()["devices"][device]
        assert shown["state"] == "online" and shown["ago"] == "just now"
    finally:
        box.stop()
        box_state.close()
        listener.stop()
        broker.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_removed_box_is_dropped_and_nothing_of_its_status_stays_retained(db, db_url, tmp_path, monkeypatch):
    """Revoking a login (``deleteClient``) drops the box without its last will too; the removal clears its retained
    topics, so no ``online`` outlives it on the broker."""
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    device = chain.device_a
    listener = Listener(db, broker.url_as("cloud", CLOUD_PW), client_id="cloud-listener").start()
    box, box_state = _edge(broker, chain, "pw-a", tmp_path / "edge")
    try:
        _report_online(box)
        assert _wait(lambda: _state(db, device)[0] == "online")
        _confirm, flashed = _remove(_owner(app), device)
        assert "revoked on the broker at once" in flashed, flashed
        assert _wait(lambda: not box.connected.is_set()), "the removed box was not dropped"
        assert _retained_status(broker, device, user="cloud", password=CLOUD_PW) is None
        with db.sessions() as s:
            assert s.get(Device, device) is None
    finally:
        box.stop()
        box_state.close()
        listener.stop()
        broker.stop()
