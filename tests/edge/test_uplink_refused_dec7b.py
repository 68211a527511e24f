"""Events the broker refused (PUBACK with a refusal code, e.g. its ACL) against a real Mosquitto: tried again after a
back-off on the same connection, never blocking newer events, and counted for the device's health."""

from __future__ import annotations

import signal
import uuid

import paho.mqtt.client as mqtt

from dangol_edge.config import MQTTConfig
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
from dangol_protocol import dump_payload
from dangol_protocol.topics import events_topic
from tests.broker import MosquittoBroker
from tests.edge.test_sync import DEVICE, STORE, arrival, wait_for

#: the cloud's login reads every device's events (without a subscriber the broker delivers them to nobody: PUBACK
#: 0x10, and the box holds them, tests/edge/test_puback_no_subscribers.py)
CLOUD = "user cloud\ntopic read dangol/v1/devices/#\n"
READ_ONLY = CLOUD + "user device\ntopic read dangol/v1/stores/#\n"  # may not publish its events
OWN_EVENTS = READ_ONLY + f"topic write {events_topic(DEVICE)}\n"
USERS = {"device": "pw", "cloud": "pw"}


def _sync(b: MosquittoBroker, state: StateStore) -> MQTTSync:
    cfg = MQTTConfig(url=b.url_for("device"), keepalive_s=5, reconnect_min_s=1, reconnect_max_s=2)
    return MQTTSync(cfg, DEVICE, STORE, state)


def _cloud(b: MosquittoBroker) -> mqtt.Client:
    """The cloud's listener: subscribed to every device's events (QoS 1) with its own login."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-cloud", protocol=mqtt.MQTTv5)
    c.username_pw_set("cloud", "pw")
    c.on_connect = lambda c, u, f, rc, p: c.subscribe("dangol/v1/devices/+/events", qos=1)
    c.connect(b.host, b.port)
    c.loop_start()
    return c


def _connections(sync: MQTTSync) -> list[int]:
    """Count the sync's connections from now on (paho calls ``on_connect`` once per connection)."""
    count = [0]
    on_connect = sync._client.on_connect

    def counting(*args):
        count[0] += 1
        on_connect(*args)
    sync._client.on_connect = counting
    return count


def test_a_refused_event_is_tried_again_after_a_back_off_without_a_reconnect(tmp_path):
    state = StateStore(tmp_path / "state.sqlite").open()
    with MosquittoBroker(tmp_path / "broker", users=USERS, acl=READ_ONLY) as b:
        cloud = _cloud(b)
        sync = _sync(b, state)
        sync.start()
        try:
            assert sync.connected.wait(10)
            connects = _connections(sync)
            ev = arrival()
            sync.send_event(ev)
            assert wait_for(lambda: sync.rejected_events >= 1, timeout=10)
            assert state.outbox_depth() == 1
            assert sync.refused_held == 1, "the refused event is counted for health"
            # the ACL is fixed on the broker (SIGHUP reloads it; connected clients stay connected)
            (b.workdir / "acl").write_text(OWN_EVENTS)
            b._proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: state.outbox_depth() == 0, timeout=15), \
                "a refused event waits for a reconnection that may never come"
            assert connects[0] == 0, "it went through only because the client reconnected"
            assert sync.refused_held == 0
        finally:
            sync.stop(timeout=1)
            cloud.disconnect()
            cloud.loop_stop()
    state.close()


def test_refused_events_do_not_block_newer_ones(tmp_path):
    """More refused events than the flusher reads at once (200) sit at the head of the outbox: the newer event behind
    them still goes out, on the same connection."""
    state = StateStore(tmp_path / "state.sqlite").open()
    other = uuid.uuid4()  # events on another device's topic: this login's ACL refuses each of them
    for _ in range(210):
        ev = arrival()
        state.enqueue(str(ev.event_id), events_topic(other), dump_payload(ev))
    with MosquittoBroker(tmp_path / "broker", users=USERS, acl=OWN_EVENTS) as b:
        cloud = _cloud(b)
        sync = _sync(b, state)
        sync.start()
        try:
            assert sync.connected.wait(10)
            connects = _connections(sync)
            assert wait_for(lambda: sync.rejected_events >= 200, timeout=20)
            good = arrival()
            sync.send_event(good)
            assert wait_for(lambda: state.outbox_depth() == 210, timeout=15), "the newer event was never sent"
            assert connects[0] == 0
            assert wait_for(lambda: sync.refused_held == 210, timeout=15)
        finally:
            sync.stop(timeout=1)
            cloud.disconnect()
            cloud.loop_stop()
    state.close()
