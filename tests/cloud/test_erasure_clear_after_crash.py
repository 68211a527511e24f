"""An erasure's retained-menu clear that the broker acknowledged but had not saved yet is undone by an unclean broker
stop (firmware-config/mosquitto/dangol.conf: persistence with ``autosave_interval 60``): the erased customer's menu
(first name) is retained again. ``serve``'s erasure schedule sends the clears of recently published erasures again
(:class:`dangol_cloud.erasure_messages.RecentClears`), a bounded number per pass. Real Mosquitto with the production
autosave interval, SQLite and PostgreSQL (found by review r4)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import dangol_protocol as proto
from dangol_cloud.erasure import erase_customer, record_confirmation
from dangol_cloud.models import Erasure, utcnow
from dangol_cloud.publishing import publish, republish_erasures
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker
from tests.cloud.test_erasure_publish_races import _store
from tests.cloud.test_mqtt_fixes import _device, _regular, _retained_menus


def _production_broker(workdir) -> MosquittoBroker:
    """Anonymous broker with dangol.conf's persistence (``autosave_interval 60``, not the tests' 1 s: the option
    given last wins)."""
    return MosquittoBroker(workdir, persistence=True, options=["autosave_interval 60"])


def _crash(broker: MosquittoBroker) -> None:
    """A power cut / OOM kill: SIGKILL, no save on the way out."""
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()


def _settings(db, tmp_path, broker, **kw) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db.url, mqtt_url=broker.url, secret_key="k",
                    listen=False, _env_file=None, **kw)


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def test_serves_schedule_clears_an_erased_customers_menu_again_after_a_broker_crash(db, tmp_path):
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    with _production_broker(tmp_path / "mq") as broker:
        store = _store(db, "main")
        device = _device(db, store)
        mina = _regular(db, "Mina Park")
        with db.transaction() as s:
            publish(s, broker.url, catalogue=False)
        port = broker.port
        broker.stop()                    # a clean restart: the menu is in mosquitto.db
        broker.start(port=port)
        assert any(mina in t for t in _retained_menus(broker))
        settings = _settings(db, tmp_path, broker, erasure_republish_minutes=0.02)  # a pass every 1.2 s
        with db.transaction() as s:      # Mina is erased; the stores are told; the door confirms at once
            erasure_id = erase_customer(s, mina, actor="owner").id
        republish_erasures(db, settings)
        with db.transaction() as s:
            record_confirmation(s, s.get(Erasure, erasure_id), device)
            assert s.get(Erasure, erasure_id).completed_at is not None
        assert not any(mina in t for t in _retained_menus(broker)), "the clear was sent"
        _crash(broker)                   # within 60 s of the clear
        broker.start(port=port)
        assert any(mina in t for t in _retained_menus(broker)), "the crash did not bring the menu back: no test"
        stop = start_background(create_app(settings, db=db, TESTING=True))
        try:
            assert _wait(lambda: not any(mina in t for t in _retained_menus(broker))), \
                "the erased customer's menu is retained again and serve's schedule never clears it"
        finally:
            stop()


class _Clears:
    """Records the topics of the retained-menu clears (empty payloads) sent on every store's menus."""

    def __init__(self, broker):
        self.topics: list[str] = []
        subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"clears-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.topics.append(m.topic) if not m.payload else None
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(f"{proto.ROOT}/stores/+/menus/+", qos=1)
        assert subscribed.wait(5)

    def take(self, count: int) -> list[str]:
        """The customer ids of the next ``count`` clears (waits for them), in order."""
        assert _wait(lambda: len(self.topics) >= count, timeout=10), self.topics
        time.sleep(0.3)  # no more than that
        got, self.topics = self.topics, []
        return [t.rsplit("/", 1)[1] for t in got]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_recent_clears_are_bounded_per_pass_go_round_and_stop_after_the_window(db, tmp_path):
    """Five erasures published within the window and one two days ago; at most two clears per pass (one store):
    passes send the newest two, the next two, the last one, then start again with the newest; the old one never."""
    from dangol_cloud.erasure_messages import RECLEAR_WINDOW_S, RecentClears

    with MosquittoBroker(tmp_path / "mq") as broker:
        store = _store(db, "main")
        device = _device(db, store)  # a target: the erasures' customers may have menus
        settings = _settings(db, tmp_path, broker)
        customers = [_regular(db, f"Customer {n}") for n in range(6)]
        with db.transaction() as s:
            ids = [erase_customer(s, c, actor="owner").id for c in customers]
        republish_erasures(db, settings)  # first publish: each clear once, and erasures/1
        with db.transaction() as s:       # the door confirms each; customers[0] newest … [4]; [5] two days ago
            now = utcnow()
            for erasure_id in ids:
                record_confirmation(s, s.get(Erasure, erasure_id), device)
            for n, erasure_id in enumerate(ids[:5]):
                s.get(Erasure, erasure_id).published_at = now - timedelta(hours=n + 1)
            s.get(Erasure, ids[5]).published_at = now - timedelta(seconds=RECLEAR_WINDOW_S + 3600)
        clears = _Clears(broker)
        try:
            recent = RecentClears(max_messages=2)
            passes = []
            for _ in range(4):
                republish_erasures(db, settings, recent=recent)
                passes.append([c for c in clears.take(1) if c in customers])
            assert passes == [customers[0:2], customers[2:4], customers[4:5], customers[0:2]]
            assert republish_erasures(db, settings) == 0  # without the round (erase paths): nothing left to send
            assert customers[5] not in clears.topics
        finally:
            clears.close()
