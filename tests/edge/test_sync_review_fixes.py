"""The door says ``online`` again as soon as it is connected again, on a real Mosquitto (one per test, free port).

A dropped connection (Wi-Fi blip, no DISCONNECT packet) makes the broker publish the box's retained last will
``offline``; paho reconnects within a second, but ``online`` used to wait for the next housekeeping pass
(``mqtt.status_interval_s``, up to an hour), and the first pass at start usually ran before the asynchronous connect
completed: the cloud showed a working door as offline. Now every successful connection asks the housekeeping worker
for a status pass at once (:meth:`dangol_edge.sync.MQTTSync.take_status_due`), which it runs on its own thread
within half a second, with fresh health.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dangol_edge.config import EdgeConfig, MQTTConfig
from dangol_edge.events import Outbox
from dangol_edge.sync import MQTTSync
from dangol_edge.workers.housekeeping import HousekeepingWorker
from dangol_protocol.models import Health
from dangol_protocol.topics import status_topic
from tests.edge.test_sync import DEVICE, STORE, broker, state, wait_for  # noqa: F401 (fixtures)

HOUR = 3600.0


def retained_status(broker) -> dict | None:
    """The status the broker retains for :data:`DEVICE` (what the cloud reads on every subscription), or None."""
    got: dict = {}
    done = threading.Event()

    def on_message(client, userdata, message):
        if message.retain:
            got["status"] = json.loads(message.payload) if message.payload else None
        done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe(status_topic(DEVICE), qos=1)
        done.wait(1.0)
    finally:
        c.disconnect()
        c.loop_stop()
    return got.get("status")


def retained_state(broker) -> str | None:
    status = retained_status(broker)
    return None if status is None else status.get("state")


@pytest.fixture
def door(tmp_path, monkeypatch, broker, state, gallery):
    """A running :class:`MQTTSync` and :class:`HousekeepingWorker` whose regular status pass is an hour away."""
    for k in ("DANGOL_HOME", "DANGOL_MQTT_URL"):
        monkeypatch.delenv(k, raising=False)
    mqtt_cfg = MQTTConfig(url=f"mqtt://{broker.host}:{broker.port}", keepalive_s=5, reconnect_min_s=1,
                          reconnect_max_s=2, status_interval_s=HOUR)
    config = EdgeConfig(home=tmp_path / "home", mqtt=mqtt_cfg)
    sync = MQTTSync(mqtt_cfg, DEVICE, STORE, state)
    frames = iter(range(100, 10_000, 100))
    healths: list[Health] = []

    def health() -> Health:
        healths.append(Health(camera="ok", fps=10.0, gallery_size=1, queue_depth=0, frames_captured=next(frames)))
        return healths[-1]

    stop = threading.Event()
    hk = HousekeepingWorker(config, gallery, state, Outbox(DEVICE, state, sync), sync, sync.stats,
                            on_erased=lambda cid: None, health=health, stop_event=stop)
    hk.healths = healths
    sync.start()
    hk.start()
    try:
        yield sync, hk
    finally:
        stop.set()
        hk.join(5)
        sync.stop()


def test_the_door_says_online_once_connected_even_when_the_first_pass_ran_before_the_connection(
        broker, state, gallery, tmp_path, monkeypatch):
    """The first housekeeping pass runs 0.5 s after the start; here the broker is down then, so that pass cannot
    publish. Once the connection is made, ``online`` follows at once, not an hour later."""
    port = broker.port
    broker.stop()
    mqtt_cfg = MQTTConfig(url=f"mqtt://127.0.0.1:{port}", keepalive_s=5, reconnect_min_s=1, reconnect_max_s=1,
                          status_interval_s=HOUR)
    for k in ("DANGOL_HOME", "DANGOL_MQTT_URL"):
        monkeypatch.delenv(k, raising=False)
    sync = MQTTSync(mqtt_cfg, DEVICE, STORE, state)
    stop = threading.Event()
    passes = []
    hk = HousekeepingWorker(EdgeConfig(home=tmp_path / "home", mqtt=mqtt_cfg), gallery, state,
                            Outbox(DEVICE, state, sync), sync, sync.stats, on_erased=lambda cid: None,
                            health=lambda: passes.append(1) or Health(camera="ok", fps=9.0, gallery_size=2,
                                                                      queue_depth=0),
                            stop_event=stop)
    sync.start()
    hk.start()
    try:
        assert wait_for(lambda: passes, 5), "the first housekeeping pass did not run"
        assert not sync.connected.is_set()
        broker.start(port=port)
        assert sync.connected.wait(10)
        assert wait_for(lambda: retained_state(broker) == "online", 5), "online waits for the next pass (an hour)"
        assert retained_status(broker)["health"]["gallery_size"] == 2
    finally:
        stop.set()
        hk.join(5)
        sync.stop()


def test_after_a_dropped_connection_the_door_says_online_again_with_fresh_health(door, broker):
    sync, hk = door
    assert sync.connected.wait(10)
    assert wait_for(lambda: retained_state(broker) == "online", 5)
    published = len(hk.healths)
    connects = []
    on_connect = sync._client.on_connect
    sync._client.on_connect = lambda *a: (connects.append(time.monotonic()), on_connect(*a))

    sync._client.socket().shutdown(socket.SHUT_RDWR)  # Wi-Fi blip: no DISCONNECT, the broker sends the last will
    assert wait_for(lambda: connects, 10) and sync.connected.wait(5)
    assert wait_for(lambda: retained_state(broker) == "online", 5), "the last will's offline stays retained"
    status = retained_status(broker)
    assert status["health"]["frames_captured"] == hk.healths[-1].frames_captured
    assert len(hk.healths) > published, "the status after the reconnection reused an old health"
    assert hk.stats.housekeeping_failures == 0


def test_a_connection_asks_for_one_status_not_one_per_tick(door, broker):
    """The request is taken once: a status published on the housekeeping thread clears it, and the next connection
    asks again."""
    sync, hk = door
    assert sync.connected.wait(10)
    assert wait_for(lambda: retained_state(broker) == "online", 5)
    time.sleep(1.0)
    n = len(hk.healths)
    time.sleep(1.5)  # connected, nothing new: no status pass until the regular one (an hour away)
    assert len(hk.healths) == n
    assert sync.take_status_due() is False
