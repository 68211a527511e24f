"""Edge MQTT sync against a real Mosquitto: cache, validation, outbox across broker restarts, last will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest

from dangol_edge.config import MQTTConfig
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
from dangol_protocol import ArrivalEvent, Erasures, dump_payload, new_event_id
from dangol_protocol.topics import catalogue_topic, erasures_topic, events_topic, menu_topic, status_topic
from tests.broker import MosquittoBroker

STORE = uuid.uuid4()
DEVICE = uuid.uuid4()


def wait_for(pred, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


class Cloud:
    """A paho client standing in for the cloud: publishes down-link, records up-link messages."""

    def __init__(self, broker: MosquittoBroker, client_id: str = "test-cloud"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("dangol/v1/devices/+/events", 1),
                                                               ("dangol/v1/devices/+/status", 1)])
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(1, 2)
        self.broker = broker
        self.c.connect(broker.host, broker.port, keepalive=10)
        self.c.loop_start()

    def _on_message(self, c, u, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/events")]

    def publish(self, topic, payload: bytes, retain=False):
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def catalogue(version: int, available_latte=True) -> bytes:
    return json.dumps({
        "schema": "catalogue/1", "store_id": str(STORE), "version": version,
        "published_at": datetime.now(timezone.utc).isoformat(), "currency": "KRW",
        "items": [{"id": "latte", "name": "Latte", "price": 5000, "available": available_latte},
                  {"id": "scone", "name": "Scone", "price": 3500}]}).encode()


def menu(customer: uuid.UUID, items: list[str]) -> bytes:
    return json.dumps({
        "schema": "menu/1", "store_id": str(STORE), "customer_id": str(customer), "display_name": "Mina",
        "model_version": "m1", "generated_at": datetime.now(timezone.utc).isoformat(),
        "items": [{"item_id": i, "score": 1.0 - n / 10} for n, i in enumerate(items)]}).encode()


@pytest.fixture
def broker(tmp_path):
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def state(tmp_path):
    s = StateStore(tmp_path / "state.sqlite").open()
    yield s
    s.close()


def make_sync(broker, state, **kw) -> MQTTSync:
    cfg = MQTTConfig(url=f"mqtt://{broker.host}:{broker.port}", keepalive_s=5, reconnect_min_s=1, reconnect_max_s=2)
    return MQTTSync(cfg, DEVICE, STORE, state, **kw)


def arrival() -> ArrivalEvent:
    return ArrivalEvent(event_id=new_event_id(), device_id=DEVICE, ts=datetime.now(timezone.utc))


def test_retained_catalogue_and_menus_are_cached_and_validated(broker, state):
    cloud = Cloud(broker)
    cust = uuid.uuid4()
    cloud.publish(catalogue_topic(STORE), catalogue(2), retain=True)
    cloud.publish(menu_topic(STORE, cust), menu(cust, ["scone", "latte"]), retain=True)
    changes = []
    sync = make_sync(broker, state, on_change=changes.append)
    sync.start()
    try:
        assert wait_for(lambda: state.catalogue() and state.menu(str(cust)))  # retained: sent on subscribe
        assert state.catalogue().version == 2
        assert [p.item_id for p in state.menu(str(cust)).items] == ["scone", "latte"]
        # an older catalogue (version 1) never replaces the newer one
        cloud.publish(catalogue_topic(STORE), catalogue(1, available_latte=False))
        # malformed payloads: not JSON, wrong schema, other store's id inside, a menu for another customer
        other = uuid.uuid4()
        bad = [(catalogue_topic(STORE), b"{not json"),
               (catalogue_topic(STORE), menu(cust, ["x"])),
               (catalogue_topic(STORE), catalogue(9).replace(str(STORE).encode(), str(uuid.uuid4()).encode())),
               (menu_topic(STORE, other), menu(cust, ["latte"]))]
        for topic, payload in bad:
            cloud.publish(topic, payload)
        assert wait_for(lambda: sync.invalid_messages >= len(bad))
        time.sleep(0.3)
        assert state.catalogue().version == 2
        assert state.menu(str(other)) is None
        assert "catalogue" in changes and "menu" in changes
        # an empty retained payload clears the menu (the cloud erased the customer)
        cloud.publish(menu_topic(STORE, cust), b"", retain=True)
        assert wait_for(lambda: state.menu(str(cust)) is None)
    finally:
        sync.stop()
        cloud.close()


def test_outbox_survives_broker_restart_and_each_event_arrives(tmp_path, state):
    # persistence as in production: the cloud's session (and what is queued for it) survives the restart
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    port = broker.port
    cloud = Cloud(broker)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        sent = [arrival() for _ in range(5)]
        for ev in sent[:2]:
            sync.send_event(ev)
        assert wait_for(lambda: len(cloud.events()) >= 2)
        broker.stop()  # the broker goes down mid-run
        assert wait_for(lambda: not sync.connected.is_set())
        for ev in sent[2:]:
            sync.send_event(ev)  # queued in the outbox while nobody listens
        time.sleep(0.5)
        assert state.outbox_depth() == 3
        broker.start(port=port)  # back on the same port
        assert sync.connected.wait(15)
        assert wait_for(lambda: state.outbox_depth() == 0, timeout=15)
        assert wait_for(lambda: {e["event_id"] for e in cloud.events()} >= {str(e.event_id) for e in sent}, 15)
        got = [e["event_id"] for e in cloud.events()]
        # at-least-once; the cloud deduplicates on event_id, so set equality is "exactly once" for it
        assert set(got) == {str(e.event_id) for e in sent}
    finally:
        sync.stop()
        cloud.close()
        broker.stop()


def test_outbox_survives_an_edge_restart(broker, tmp_path):
    path = tmp_path / "state.sqlite"
    s1 = StateStore(path).open()
    ev = arrival()
    # the edge queued an event and was killed before any broker was reachable
    s1.enqueue(str(ev.event_id), events_topic(DEVICE), dump_payload(ev))
    s1.close()
    s2 = StateStore(path).open()
    cloud = Cloud(broker)
    sync = make_sync(broker, s2)
    sync.start()
    try:
        assert wait_for(lambda: [e["event_id"] for e in cloud.events()] == [str(ev.event_id)])
        assert wait_for(lambda: s2.outbox_depth() == 0)
    finally:
        sync.stop()
        cloud.close()
        s2.close()


def test_erasure_is_applied_and_confirmed(broker, state):
    cust = uuid.uuid4()
    state.put_menu(json.loads(menu(cust, ["latte"])))
    erased = []
    sync = make_sync(broker, state, on_erasure=lambda e: erased.extend(map(str, e.customer_ids)) or erased)
    cloud = Cloud(broker)
    sync.start()
    try:
        assert sync.connected.wait(10)
        time.sleep(0.3)  # subscriptions are in place
        er = Erasures(store_id=STORE, erasure_id=uuid.uuid4(), requested_at=datetime.now(timezone.utc),
                      customer_ids=[cust])
        cloud.publish(erasures_topic(STORE), dump_payload(er))
        assert wait_for(lambda: any(e.get("kind") == "erasure-done" for e in cloud.events()))
        done = [e for e in cloud.events() if e.get("kind") == "erasure-done"][0]
        assert done["erasure_id"] == str(er.erasure_id) and done["customer_ids"] == [str(cust)]
        assert erased == [str(cust)] and state.menu(str(cust)) is None
    finally:
        sync.stop()
        cloud.close()


CHILD = """
import sys, time, uuid
from dangol_edge.config import MQTTConfig
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
s = MQTTSync(MQTTConfig(url=sys.argv[1], keepalive_s=5), uuid.UUID(sys.argv[2]), uuid.UUID(sys.argv[3]),
             StateStore(sys.argv[4]).open())
s.start()
s.connected.wait(10)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_marks_a_killed_device_offline(broker, tmp_path):
    cloud = Cloud(broker)
    try:
        p = subprocess.Popen([sys.executable, "-c", CHILD, f"mqtt://{broker.host}:{broker.port}", str(DEVICE),
                              str(STORE), str(tmp_path / "child.sqlite")], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "up"
        os.kill(p.pid, signal.SIGKILL)  # no DISCONNECT: the broker must publish the last will
        p.wait(5)

        def offline():
            with cloud.lock:
                st = [json.loads(pl) for t, pl, _ in cloud.messages if t == status_topic(DEVICE)]
            return st and st[-1]["state"] == "offline"

        assert wait_for(offline, timeout=15)  # 1.5 × keepalive
    finally:
        cloud.close()


def test_a_refusal_acknowledged_before_publish_returns_keeps_the_event(tmp_path, state):
    """The PUBACK (here a refusal by the ACL) is handled before the flusher learns which event the message
    id was: the event must stay in the outbox, counted as refused, not be marked sent."""
    acl = "user device\ntopic read dangol/v1/stores/#\n"  # may not publish its events
    with MosquittoBroker(tmp_path / "broker", users={"device": "pw"}, acl=acl) as b:
        cfg = MQTTConfig(url=f"mqtt://device:pw@{b.host}:{b.port}", keepalive_s=5, reconnect_min_s=1,
                         reconnect_max_s=2)
        sync = MQTTSync(cfg, DEVICE, STORE, state)
        sync.start()
        try:
            assert sync.connected.wait(10)
            client = sync._client
            acked: set[int] = set()
            on_publish = client.on_publish

            def spy(c, u, mid, rc, props):
                on_publish(c, u, mid, rc, props)
                acked.add(mid)
            client.on_publish = spy
            publish = client.publish

            def slow_publish(*args, **kwargs):  # return the message id only once its PUBACK was handled
                info = publish(*args, **kwargs)
                assert wait_for(lambda: info.mid in acked, timeout=5)
                return info
            client.publish = slow_publish
            sync.send_event(arrival())
            assert wait_for(lambda: sync.rejected_events == 1, timeout=10)
            time.sleep(0.3)
            assert state.outbox_depth() == 1, "a refused event was marked sent"
            assert not sync._early and not sync._inflight
        finally:
            sync.stop(timeout=1)


def test_status_reports_the_installed_package_version(broker, state, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7" if name == "dangol" else real(name))
    from dangol_protocol.models import Health

    cloud = Cloud(broker)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        sync.publish_status(Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0))
        assert wait_for(lambda: any(t.endswith("/status") and json.loads(p).get("state") == "online"
                                    for t, p, _ in list(cloud.messages)))
        status = [json.loads(p) for t, p, _ in cloud.messages if t.endswith("/status")][-1]
        assert status["software_version"] == "9.8.7"
    finally:
        sync.stop(timeout=1)
        cloud.close()


def test_a_malformed_broker_url_names_it_without_the_password(state):
    from dangol_edge.sync import MQTTConfigError

    sync = MQTTSync(MQTTConfig(url="http://device:s3cret@broker.example:1883"), DEVICE, STORE, state)
    with pytest.raises(MQTTConfigError, match="broker.example") as caught:
        sync.start()
    assert "s3cret" not in str(caught.value)
