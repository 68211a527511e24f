"""An event the broker acknowledges with PUBACK 0x10 *No matching subscribers* reached nobody (the cloud listener's
persistent session is not on the broker: lost in a crash, persistence wiped, or expired): against a real Mosquitto,
the event stays in the outbox, is counted apart from the ACL's refusals, logged once per streak, tried again after a
back-off, and delivered once a persistent listener session subscribes."""

from __future__ import annotations

import json
import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from dangol_protocol import ALL_DEVICE_EVENTS
from dangol_protocol.client import connect_kwargs
from tests.broker import MosquittoBroker
from tests.edge.test_sync import arrival, make_sync, wait_for


def _spy_pubacks(sync) -> list[int]:
    """The reason codes (ints) of every PUBACK the sync's client gets from now on."""
    codes: list[int] = []
    on_publish = sync._client.on_publish

    def spying(client, userdata, mid, reason_code, properties):
        codes.append(reason_code.value)
        on_publish(client, userdata, mid, reason_code, properties)
    sync._client.on_publish = spying
    return codes


class Listener:
    """The cloud listener's shape: MQTT 5, persistent session (clean_start False, never expires), QoS 1 on every
    device's events; records the ``event_id`` of each event it gets."""

    def __init__(self, broker: MosquittoBroker):
        self.event_ids: list[str] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dangol-cloud-listener",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(ALL_DEVICE_EVENTS, qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.event_ids.append(json.loads(m.payload)["event_id"])
        self.client.connect(broker.host, broker.port, **connect_kwargs(clean_start=False))
        self.client.loop_start()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_an_event_nobody_subscribed_to_stays_in_the_outbox_until_a_listener_subscribes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dangol_edge.sync")
    with MosquittoBroker(tmp_path / "broker") as b:
        from dangol_edge.state import StateStore

        state = StateStore(tmp_path / "state.sqlite").open()
        sync = make_sync(b, state)
        sync.start()
        listener = None
        try:
            assert sync.connected.wait(10)
            codes = _spy_pubacks(sync)
            events = [arrival() for _ in range(3)]
            for ev in events:
                sync.send_event(ev)
            assert wait_for(lambda: codes.count(0x10) >= 3, timeout=10), codes
            assert state.outbox_depth() == 3, "events nobody received were deleted from the outbox"
            assert sync.unheard_held == 3, "held for nobody listening: counted for the device's health"
            assert sync.refused_held == 0, "not counted as refusals by the broker's ACL"
            assert sync.rejected_events == 0
            # tried again after their back-off (1 s, 2 s, …), still nobody: kept, and not logged again
            assert wait_for(lambda: codes.count(0x10) >= 6, timeout=10), codes
            assert state.outbox_depth() == 3
            unheard = [r for r in caplog.records if "no subscriber" in r.getMessage()]
            assert len(unheard) == 1, [r.getMessage() for r in unheard]
            assert unheard[0].levelno == logging.WARNING

            listener = Listener(b)  # the cloud's persistent session subscribes again
            assert listener.subscribed.wait(10)
            assert wait_for(lambda: state.outbox_depth() == 0, timeout=15), \
                "the held events were never delivered once the listener was back"
            assert wait_for(lambda: len(set(listener.event_ids)) == 3, timeout=5)
            assert set(listener.event_ids) == {str(ev.event_id) for ev in events}
            assert sync.unheard_held == 0
            ended = [r for r in caplog.records if "subscribed again" in r.getMessage()]
            assert len(ended) == 1, "the end of the streak is logged once"
        finally:
            sync.stop(timeout=1)
            if listener is not None:
                listener.close()
            state.close()


def test_a_status_nobody_subscribed_to_is_not_held(tmp_path):
    """A retained status is kept by the broker whoever listens: 0x10 is a success for it (nothing to hold)."""
    with MosquittoBroker(tmp_path / "broker") as b:
        from dangol_edge.state import StateStore

        state = StateStore(tmp_path / "state.sqlite").open()
        sync = make_sync(b, state)
        sync.start()
        try:
            assert sync.connected.wait(10)
            codes = _spy_pubacks(sync)
            from dangol_protocol.models import Health

            sync.publish_status(Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0))
            assert wait_for(lambda: 0x10 in codes, timeout=10), codes
            assert sync.unheard_held == 0 and sync.refused_held == 0
        finally:
            sync.stop(timeout=1)
            state.close()
