"""Erasures racing other MQTT work, each with a real Mosquitto per test and a real database:

1. a publish that is sending menus while a customer is erased (or withdraws consent) never leaves that customer's
   menu retained on the broker after the erasure's one retained clear — whether the erasure lands between reading
   the menus and sending them, or while the customer's own menu is on its way;
2. a device flipping its status offline/online gets its unconfirmed erasures re-sent at most once per
   ``erasure_republish_minutes``, and never on the listener's worker: other devices' events keep flowing;
3. a box added to a store after an erasure confirms it harmlessly (no refusal, no dead letter), while a confirmation
   of another store's erasure or of an unknown one is still refused;
4. (found on the way) a dead letter whose reason quotes a NUL character is kept, not a PostgreSQL error.

The races are made deterministic by hooking the moment between reading and sending, not by timing.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, insert, select

import dangol_cloud.publishing as publishing
import dangol_protocol as proto
from dangol_cloud.erasure import erase_customer
from dangol_cloud.events import Listener, Outcome, handle_message
from dangol_cloud.models import (
    CatalogueItem, Customer, DeadLetter, Device, DeviceTrust, Erasure, Menu, ModelVersion, Store, Visit, utcnow,
)
from dangol_cloud.publishing import publish, republish_erasures
from dangol_cloud.security import hash_token
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker

from .conftest import OWNER_EMAIL
from .test_cloud_erasure import Edge
from .test_mqtt_fixes import _device, _retained_menus

REGULARS = 300  # menus sent before and after the erased customer's: enough for a real publish, quick to run


# --- helpers -----------------------------------------------------------------------------------------
def _settings(tmp_path, db, broker, **kw) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db.url, mqtt_url=broker.url, secret_key="k",
                    _env_file=None, **kw)


def _store(db, name: str) -> str:
    with db.transaction() as s:
        store = Store(name=name, ref=name, api_token_hash=hash_token(f"{name}-token-0123456789"))
        s.add(store)
        s.flush()
        return store.id


def _chain_with_regulars(db, n: int = REGULARS) -> tuple[str, str, str]:
    """One store and its door, ``n`` consenting regulars with a menu, and Mina (consenting, with a menu) in the
    middle of them: ``(store, device, Mina's id)``."""
    store = _store(db, "main")
    device = _device(db, store)
    ids = [str(uuid.uuid4()) for _ in range(n + 1)]
    mina = ids[n // 2]
    now = utcnow()
    with db.transaction() as s:
        s.add_all([CatalogueItem(id="latte", ref="latte", name="Latte", category="Coffee", price=3.8),
                   ModelVersion(version="m1", path="/nonexistent")])
        s.flush()
        s.execute(insert(Customer), [{"id": cid, "display_name": "Mina Park" if cid == mina else f"Guest{i} X",
                                      "status": "active", "source": "dashboard", "consent_by": "jo",
                                      "consent_at": now, "consent_text_version": "2026-01"}
                                     for i, cid in enumerate(ids)])
        s.execute(insert(Menu), [{"customer_id": cid, "model_version": "m1", "generated_at": now,
                                  "picks": [{"item_id": "latte", "score": 1.0, "reasons": []}]} for cid in ids])
    return store, device, mina


def _end_consent(db, customer_id: str, how: str) -> None:
    """The owner erases the customer, or the customer withdraws consent, on the dashboard (committed)."""
    with db.transaction() as s:
        if how == "erase":
            erase_customer(s, customer_id, actor=OWNER_EMAIL)
        else:
            from dangol_cloud.web.customers import withdraw_consent

            withdraw_consent(s, s.get(Customer, customer_id), actor=OWNER_EMAIL)


class TopicLog:
    """Everything published on one topic, in the broker's order: ``"menu"`` or ``"clear"``."""

    def __init__(self, broker, topic: str) -> None:
        self.seen: list[str] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.seen.append("menu" if m.payload else "clear")
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# --- 1. an erasure during a menu publish ---------------------------------------------------------------
def test_an_erasure_between_reading_and_sending_the_menus_leaves_no_menu_retained(db, tmp_path, monkeypatch):
    """The publish has read every menu (Mina's included) when the owner erases Mina and the erasure's clear goes
    out; then the publish sends what it read. Mina's menu must not be sent, let alone retained."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, db, broker)
        store, _device_id, mina = _chain_with_regulars(db)
        topic = proto.menu_topic(store, mina)
        watch = TopicLog(broker, topic)
        read_menus = publishing.menu_messages

        def read_then_erase(*args, **kwargs):
            messages = list(read_menus(*args, **kwargs))  # everything read, Mina's menu included ...
            assert any(t == topic for t, _, _ in messages)
            _end_consent(db, mina, "erase")  # ... then the owner erases her and her clear goes out
            assert republish_erasures(db, settings) >= 2
            yield from messages

        monkeypatch.setattr(publishing, "menu_messages", read_then_erase)
        try:
            with db.transaction() as s:
                report = publish(s, broker.url, catalogue=False)
            retained = _retained_menus(broker)
            time.sleep(0.3)
        finally:
            watch.close()
        assert topic not in retained, f"the erased customer's menu is retained (sequence on her topic: {watch.seen})"
        assert watch.seen == ["clear"]
        assert len(retained) == REGULARS  # everyone else's menu went out
        assert report.menus == REGULARS and report.menus_withheld == 1


@pytest.mark.parametrize("how", ["erase", "withdraw"])
def test_an_erasure_while_the_customers_menu_is_being_sent_is_cleared_after_it(db, tmp_path, monkeypatch, how):
    """Worst moment: the publish checked Mina was still a regular and is handing her menu to the broker when
    she is erased (or withdraws consent) and the erasure's one clear goes out first. The publish must clear her
    menu again after it; the retained state ends empty."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, db, broker)
        store, _device_id, mina = _chain_with_regulars(db)
        topic = proto.menu_topic(store, mina)
        watch = TopicLog(broker, topic)
        real_publish = mqtt.Client.publish
        fired = threading.Event()

        def erase_first(self, t, payload=None, *args, **kwargs):
            if t == topic and payload and not fired.is_set():  # the publisher is about to send Mina's menu
                fired.set()
                _end_consent(db, mina, how)
                assert republish_erasures(db, settings) >= 2  # the erasure's retained clear reaches the broker
            return real_publish(self, t, payload, *args, **kwargs)

        monkeypatch.setattr(mqtt.Client, "publish", erase_first)
        try:
            with db.transaction() as s:
                report = publish(s, broker.url, catalogue=False)
            monkeypatch.undo()
            assert fired.is_set()
            retained = _retained_menus(broker)
            time.sleep(0.3)
        finally:
            watch.close()
        assert topic not in retained, f"the erased customer's menu is retained (sequence on her topic: {watch.seen})"
        assert watch.seen == ["clear", "menu", "clear"]
        assert len(retained) == REGULARS
        assert report.menus_cleared == 1


# --- 2. a device flapping offline/online ----------------------------------------------------------------
def test_a_flapping_device_gets_erasures_resent_once_per_interval_without_blocking_the_listener(db, tmp_path,
                                                                                              monkeypatch):
    """Inside ``serve`` (start_background): a hostile box at store A flips offline/online 20 times. Its unconfirmed
    erasure is re-sent once (erasure_republish_minutes = 60), the 19 others are skipped and counted; while that one
    re-send is still stuck (a slow broker), an honest box's arrival at store B is stored."""
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, db, broker, erasure_republish_minutes=60, retention_days=1095)
        store_a, store_b = _store(db, "a"), _store(db, "b")
        hostile, honest = _device(db, store_a, "hostile"), _device(db, store_b, "honest")
        with db.transaction() as s:
            s.add(Customer(id=(old := str(uuid.uuid4())), status="active", source="edge"))
        with db.transaction() as s:
            erase_customer(s, old, actor="retention", reason="retention", scrub=False)
        assert republish_erasures(db, settings) > 0  # sent once; the hostile box never confirms

        resent: list[str] = []
        gate = threading.Event()
        real_republish = publishing.republish_erasures

        def slow_republish(db_, settings_, *, device_id=None):
            if device_id is None:  # the schedule's re-publish: not what this test watches
                return real_republish(db_, settings_)
            resent.append(device_id)
            gate.wait(30)  # a broker that takes its time
            return real_republish(db_, settings_, device_id=device_id)

        monkeypatch.setattr(publishing, "republish_erasures", slow_republish)
        probe = TopicLog(broker, proto.erasures_topic(store_a))
        clients = {}
        for device in (hostile, honest):
            clients[device] = c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device),
                                              protocol=mqtt.MQTTv5)
            c.connect(broker.host, broker.port)
            c.loop_start()
        app = create_app(settings, db=db)
        stop = start_background(app)
        try:
            t = utcnow() - timedelta(seconds=10)
            for _ in range(20):  # each offline → online pair is the box "coming online"
                for state in ("offline", "online"):
                    t += timedelta(milliseconds=5)
                    status = proto.Status(device_id=uuid.UUID(hostile), state=state, ts=t)
                    clients[hostile].publish(proto.status_topic(hostile), proto.dump_payload(status), qos=1)
            assert _wait(lambda: resent == [hostile], 10)  # the first re-send is under way, stuck ...
            arrival = proto.ArrivalEvent(event_id=proto.new_event_id(), device_id=uuid.UUID(honest), ts=utcnow())
            clients[honest].publish(proto.events_topic(honest), proto.dump_payload(arrival), qos=1)

            def stored() -> bool:
                with db.sessions() as s:
                    return bool(s.scalar(select(func.count()).select_from(Visit)
                                         .where(Visit.event_id == str(arrival.event_id))))

            # ... and the listener's worker goes on: other devices' events do not wait behind it
            assert _wait(stored, 10), "the honest box's arrival waited behind the flapping box's re-send"
            gate.set()

            def all_applied() -> bool:
                with db.sessions() as s:
                    device = s.get(Device, hostile)
                    at = device.status_at
                    return at is not None and (at if at.tzinfo else at.replace(tzinfo=timezone.utc)) >= t

            assert _wait(all_applied, 10)
            assert _wait(lambda: len(probe.seen) >= 1, 10)
            time.sleep(0.5)
        finally:
            gate.set()
            stop()
            probe.close()
            for c in clients.values():
                c.disconnect()
                c.loop_stop()
        assert resent == [hostile], f"re-sent {len(resent)} times for 20 flips"
        assert len(probe.seen) == 1  # one erasures/1 message to store A
        assert app.extensions["dangol_listener"].erasure_resends_skipped == 19


def test_the_resender_skips_a_device_within_the_interval_and_forgets_the_oldest_devices():
    """:class:`~dangol_cloud.background.ErasureResender` on its own: a device is re-sent again once the interval has
    passed, repeats meanwhile are skipped and counted, a failing re-send is counted, and only the newest
    ``max_devices`` devices are remembered."""
    from dangol_cloud.background import ErasureResender

    calls: list[str] = []
    done = threading.Semaphore(0)

    def resend(device_id: str) -> int:
        calls.append(device_id)
        done.release()
        if device_id == "broken":
            raise RuntimeError("broker down")
        return 2

    resender = ErasureResender(resend, min_interval=0.4, max_devices=3)
    try:
        assert resender.submit("a") is True
        assert done.acquire(timeout=5)
        assert resender.submit("a") is False and resender.submit("a") is False
        assert resender.skipped == 2
        time.sleep(0.45)
        assert resender.submit("a") is True
        assert done.acquire(timeout=5)
        assert resender.submit("broken") is True
        assert done.acquire(timeout=5)
        assert _wait(lambda: resender.failures == 1)
        for device in ("b", "c", "d"):  # "a" and "broken" are forgotten: bounded memory
            assert resender.submit(device) is True
            assert done.acquire(timeout=5)
        assert resender.remembered() == 3
        assert resender.submit("a") is True
        assert done.acquire(timeout=5)
        assert calls == ["a", "a", "broken", "b", "c", "d", "a"]
        assert _wait(lambda: resender.sent == 6)
    finally:
        resender.stop()
    assert resender.submit("e") is False  # stopped: nothing is queued


# --- 3. a box added after an erasure --------------------------------------------------------------------
def test_a_box_added_after_an_erasure_confirms_it_harmlessly_and_others_stay_refused(db, tmp_path):
    """Store A's old box never confirmed the erasures; the owner adds a new box there. The schedule re-sends the
    erasures to store A, the new box confirms each time: accepted as a no-op (no refusal, no dead letter; the old box
    still owes its confirmation). A box at store B confirming A's erasure, or an erasure never issued, is refused."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        settings = _settings(tmp_path, db, broker)
        store_a = _store(db, "a")
        old = _device(db, store_a, "old door (broken, offline)")
        customers = [str(uuid.uuid4()) for _ in range(3)]
        with db.transaction() as s:
            s.add_all([Customer(id=c, status="active", source="edge") for c in customers])
        with db.transaction() as s:
            erasures = [erase_customer(s, c, actor="retention", reason="retention", scrub=False).id
                        for c in customers]
        new = _device(db, store_a, "new door")
        store_b = _store(db, "b")
        other = _device(db, store_b, "door at store B")

        listener = Listener(db, broker.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}").start()
        edge = Edge(broker, new, store_a).connect()
        try:
            for run in (1, 2):  # serve's schedule, every erasure_republish_minutes
                before = listener.counts[Outcome.STORED]
                assert republish_erasures(db, settings) > 0
                assert _wait(lambda: listener.counts[Outcome.STORED] + listener.counts[Outcome.REFUSED]
                             >= before + len(erasures)), f"run {run}: the new box's confirmations were not handled"
                assert listener.counts[Outcome.REFUSED] == 0, f"run {run}: the new box's confirmations were refused"
        finally:
            edge.disconnect()
            listener.stop()

        with db.sessions() as s:
            assert s.get(DeviceTrust, new) is None or s.get(DeviceTrust, new).refused == 0
            assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0
            for erasure in s.scalars(select(Erasure)):
                assert erasure.confirmed_by == [] and erasure.completed_at is None  # the old box still owes it
                assert erasure.targets == [old]

        def done(device: str, erasure_id: str, customer_id: str) -> bytes:
            return proto.dump_payload(proto.ErasureDoneEvent(
                event_id=uuid.uuid4(), device_id=uuid.UUID(device), ts=utcnow(), erasure_id=uuid.UUID(erasure_id),
                customer_ids=[uuid.UUID(customer_id)]))

        assert handle_message(db, proto.events_topic(other), done(other, erasures[0], customers[0])) \
            is Outcome.REFUSED  # store B's box: not its store's erasure
        assert handle_message(db, proto.events_topic(new), done(new, str(uuid.uuid4()), customers[0])) \
            is Outcome.REFUSED  # an erasure the cloud never issued
        assert handle_message(db, proto.events_topic(new), done(new, erasures[0], customers[1])) \
            is Outcome.REFUSED  # the new box names another customer than the erasure did
        with db.sessions() as s:
            assert s.scalar(select(func.count()).select_from(DeadLetter)) == 3
            assert s.get(DeviceTrust, other).refused == 1


# --- found on the way: a dead letter whose reason quotes a NUL ------------------------------------------
def test_a_validation_error_quoting_a_nul_is_dead_lettered_not_a_database_error(db):
    """The reason of an invalid event quotes the bad character; PostgreSQL text cannot hold NUL, so writing that
    dead letter raised (the property test of test_event_properties.py found it) instead of keeping it."""
    store = _store(db, "a")
    device = _device(db, store)
    raw = b'{"schema":"event/1","kind":"arrival","event_id":"\\u0000"}'
    assert handle_message(db, proto.events_topic(device), raw) is Outcome.INVALID
    with db.sessions() as s:
        (reason,) = s.scalars(select(DeadLetter.reason)).all()
        assert "\x00" not in reason and "\\x00" in reason
        assert s.get(DeviceTrust, device).dead_letters == 1
