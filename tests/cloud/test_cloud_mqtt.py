"""MQTT with a real Mosquitto: retained catalogue and menus, erasures, the event consumer, device ACLs."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.broker_auth import acl_text, password_lines
from dangol_cloud.cli import main as cli
from dangol_cloud.erasure import erase_customer
from dangol_cloud.events import Listener, Outcome
from dangol_cloud.models import CatalogueItem, Customer, Device, Erasure, Menu, ModelVersion, Store, Visit
from dangol_cloud.mqtt import MqttError, connect
from dangol_cloud.publishing import publish, publish_catalogue_version
from tests.broker import MosquittoBroker

from .conftest import add_store_and_device, utc
from .test_cloud_data import counts


class Collector:
    """A paho client that subscribes and collects ``(topic, payload, retain)`` of every message."""

    def __init__(self, broker: MosquittoBroker, topics: list[str], username=None, password=None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        if username:
            self.client.username_pw_set(username, password)
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert self.subscribed.wait(5), "no SUBACK"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.lock.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0, settle: float = 0.3) -> list[tuple[str, bytes, bool]]:
        """Wait until at least ``n`` messages arrived, then ``settle`` seconds more (to catch extras)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.messages) < n and time.monotonic() < deadline:
                self.lock.wait(deadline - time.monotonic())
        time.sleep(settle)
        with self.lock:
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _seed(db):
    """Store + device, two items (one sold out), a published catalogue, a consented and a history-only
    customer, both with menus."""
    store_id, device_id = add_store_and_device(db)
    with db.transaction() as s:
        latte = CatalogueItem(ref="latte", name="Caffè latte", category="Coffee", price=3.8, tags=["milk"])
        scone = CatalogueItem(ref="scone", name="Scone", category="Bakery", price=2.9, tags=[], available=False)
        mina = Customer(display_name="Mina", status="active", source="edge", consent_by="staff:jo",
                        consent_at=utc(2026, 1, 2), consent_text_version="2026-01")
        imported = Customer(external_ref="01607000", status="active", source="import")
        s.add_all([latte, scone, mina, imported, ModelVersion(version="m-test", path="nowhere")])
        s.flush()
        for c in (mina, imported):
            s.add(Menu(customer_id=c.id, model_version="m-test", generated_at=utc(2026, 1, 3), picks=[
                {"item_id": latte.id, "score": 2.5, "reasons": ["bought 7 times"]},
                {"item_id": scone.id, "score": 1.0, "reasons": []}]))
        publish_catalogue_version(s, published_by="owner@cafe.example")
        return store_id, device_id, mina.id, imported.id, latte.id


def test_publish_delivers_retained_catalogue_and_menus(db, mosquitto):
    store_id, _, mina, imported, latte = _seed(db)
    with db.transaction() as s:
        report = publish(s, mosquitto.url)
    assert (report.stores, report.catalogue, report.menus) == (1, 1, 1)
    # a client that subscribes only now still receives both: they are retained
    late = Collector(mosquitto, [f"dangol/v1/stores/{store_id}/#"])
    try:
        messages = late.wait_for(2)
    finally:
        late.close()
    assert len(messages) == 2 and all(retain for _, _, retain in messages)
    parsed = {type(m).__name__: m for m in (proto.parse_payload(t, p) for t, p, _ in messages)}
    catalogue, menu = parsed["Catalogue"], parsed["Menu"]
    assert catalogue.version == 1 and str(catalogue.store_id) == store_id
    assert {i.name: i.available for i in catalogue.items} == {"Caffè latte": True, "Scone": False}
    assert str(menu.customer_id) == mina                       # the history-only customer is not sent
    assert [p.item_id for p in menu.items] == [latte]           # the sold-out scone is left out
    assert menu.items[0].reasons == ["bought 7 times"] and menu.model_version == "m-test"


def test_cli_publish_uses_the_configured_broker(db, db_url, mosquitto, monkeypatch, tmp_path, capsys):
    store_id, *_ = _seed(db)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", mosquitto.url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["publish", "--store", store_id]) == 0
    assert "1 catalogue, 1 menus" in capsys.readouterr().out
    late = Collector(mosquitto, [proto.catalogue_topic(store_id)])
    try:
        (topic, payload, retain), = late.wait_for(1)
    finally:
        late.close()
    assert retain and proto.parse_payload(topic, payload).store_id == uuid.UUID(store_id)
    assert cli(["publish", "--store", str(uuid.uuid4())]) == 2   # unknown store: input error


def test_erasure_clears_the_menu_and_tells_the_store(db, mosquitto):
    store_id, _, mina, _, _ = _seed(db)
    with db.transaction() as s:
        publish(s, mosquitto.url)
    live = Collector(mosquitto, [proto.erasures_topic(store_id)])
    try:
        with db.transaction() as s:
            erase_customer(s, mina, actor="owner")
        with db.transaction() as s:
            report = publish(s, mosquitto.url, catalogue=False)
        (topic, payload, retain), = live.wait_for(1)
    finally:
        live.close()
    erasures = proto.parse_payload(topic, payload)
    assert not retain and erasures.customer_ids == [uuid.UUID(mina)] and report.erasures == 2
    with db.sessions() as s:
        assert s.scalar(select(Erasure.published_at)) is not None
    late = Collector(mosquitto, [proto.menus_wildcard(store_id)])
    try:
        assert late.wait_for(1, timeout=1.0) == []             # the retained menu is gone
    finally:
        late.close()


def _device_client(broker, username=None, password=None):
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}")
    if username:
        client.username_pw_set(username, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_listener_records_a_replayed_arrival_once_and_drops_malformed(db, mosquitto):
    _, device_id = add_store_and_device(db)
    listener = Listener(db, mosquitto.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}").start()
    edge = _device_client(mosquitto)
    try:
        arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 5, 8))
        topic = proto.events_topic(device_id)
        for _ in range(2):  # QoS 1 redelivery / outbox replay
            edge.publish(topic, proto.dump_payload(arrival), qos=1).wait_for_publish(5)
        assert _wait(lambda: listener.counts[Outcome.STORED] + listener.counts[Outcome.DUPLICATE] >= 2)
        before = counts(db)
        edge.publish(topic, b'{"schema": "event/1", "kind": "arrival"}', qos=1).wait_for_publish(5)
        edge.publish(topic, b"\x00garbage", qos=1).wait_for_publish(5)
        status = proto.Status(device_id=uuid.UUID(device_id), state="online",
                              health=proto.Health(camera="ok", fps=7.0, gallery_size=3, queue_depth=0))
        edge.publish(proto.status_topic(device_id), proto.dump_payload(status), qos=1, retain=True).wait_for_publish(5)
        assert _wait(lambda: listener.counts[Outcome.INVALID] >= 2 and listener.counts[Outcome.STORED] >= 2)
    finally:
        edge.disconnect()
        edge.loop_stop()
        listener.stop()
    assert listener.counts[Outcome.STORED] == 2 and listener.counts[Outcome.DUPLICATE] == 1
    assert counts(db) == before
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Visit)) == 1
        assert s.get(Device, device_id).health["fps"] == 7.0


def test_device_credentials_and_acl_limit_a_device_to_its_store(db, tmp_path):
    """Password file + ACL generated from the database, enforced by a real Mosquitto."""
    store_a, device_a = add_store_and_device(db, device_password="pw-a")
    with db.transaction() as s:
        other = Store(name="Harbour")
        s.add(other)
        s.flush()
        store_b = other.id
        user_a = s.get(Device, device_a).mqtt_username
        lines = password_lines(s, cloud_user="cloud", cloud_password="cloud-pw")
        acl = acl_text(s, cloud_user="cloud")
        publish_catalogue_version(s, published_by="t")
    assert f"{user_a}:$7$" in "\n".join(lines)
    with MosquittoBroker(tmp_path / "secure", password_lines=lines, acl=acl) as broker:
        with pytest.raises(MqttError, match="refused"):  # a wrong password is refused by the broker
            connect(f"mqtt://{user_a}:wrong@{broker.host}:{broker.port}", "x", timeout=3)
        with db.transaction() as s:
            report = publish(s, f"mqtt://cloud:cloud-pw@{broker.host}:{broker.port}")
        assert report.catalogue == 2
        device = Collector(broker, ["dangol/v1/stores/+/catalogue"], username=user_a, password="pw-a")
        try:
            got = device.wait_for(1, timeout=3, settle=0.5)
        finally:
            device.close()
    assert [t for t, _, _ in got] == [proto.catalogue_topic(store_a)]
    assert proto.catalogue_topic(store_b) not in [t for t, _, _ in got]


def test_serve_runs_the_dashboard_and_the_event_consumer(db, db_url, mosquitto, tmp_path):
    """`dangol-cloud serve` as a real process: HTTP answers, and an arrival sent over MQTT becomes a visit."""
    import os
    import subprocess
    import sys
    import urllib.request

    from tests.broker import free_port

    _, device_id = add_store_and_device(db)
    port = free_port()
    env = {**os.environ, "DANGOL_DATABASE_URL": db_url, "DANGOL_MQTT_URL": mosquitto.url,
           "DANGOL_CLOUD_HOME": str(tmp_path / "home"), "DANGOL_MQTT_CLIENT_ID": f"serve-{uuid.uuid4().hex[:6]}"}
    env.pop("DANGOL_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "dangol_cloud.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def http_ok():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1).status == 200
            except OSError:
                return False

        assert _wait(http_ok, timeout=20), "serve did not answer HTTP"
        edge = _device_client(mosquitto)
        arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 5, 9))
        edge.publish(proto.events_topic(device_id), proto.dump_payload(arrival), qos=1).wait_for_publish(5)
        edge.disconnect()
        edge.loop_stop()

        def visits():
            with db.sessions() as s:
                return s.scalar(select(func.count()).select_from(Visit))

        assert _wait(lambda: visits() == 1, timeout=10)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "MQTT listener subscribed" in output


def test_cli_publish_freezes_a_new_catalogue_version_only_when_it_changed(db, db_url, mosquitto, monkeypatch,
                                                                          tmp_path):
    from dangol_cloud.models import CatalogueVersion

    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="mocha", name="Mocha", price=4.1, tags=[]))
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DANGOL_PUBLIC_URL", "http://cloud.local:8000")
    from tests.broker import free_port

    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    assert cli(["publish"]) == 1                                   # broker down: no version is left behind

    def versions():
        with db.sessions() as s:
            return s.scalars(select(CatalogueVersion.version).order_by(CatalogueVersion.version)).all()

    assert versions() == []
    monkeypatch.setenv("DANGOL_MQTT_URL", mosquitto.url)
    assert cli(["publish"]) == 0 and versions() == [1]
    assert cli(["publish"]) == 0 and versions() == [1]              # unchanged: same version again
    with db.transaction() as s:
        s.scalar(select(CatalogueItem)).price = 4.3
    assert cli(["publish"]) == 0 and versions() == [1, 2]
    late = Collector(mosquitto, [proto.catalogue_topic(store_id)])
    try:
        (topic, payload, _), = late.wait_for(1)
    finally:
        late.close()
    catalogue = proto.parse_payload(topic, payload)
    assert catalogue.version == 2 and catalogue.items[0].price == 4.3


def test_event_that_failed_to_store_is_redelivered_after_reconnect(db, mosquitto):
    """Database trouble while storing an arrival: the message is not acknowledged, and the broker delivers
    it again when the listener reconnects with its persistent session."""
    from sqlalchemy import text

    _, device_id = add_store_and_device(db)
    client_id = f"cloud-{uuid.uuid4().hex[:6]}"
    listener = Listener(db, mosquitto.url, client_id=client_id).start()
    with db.engine.begin() as conn:   # simulate a broken database: the visits table is unusable
        conn.execute(text("ALTER TABLE visits RENAME TO visits_away"))
    edge = _device_client(mosquitto)
    arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 5, 8))
    try:
        edge.publish(proto.events_topic(device_id), proto.dump_payload(arrival), qos=1).wait_for_publish(5)
        assert _wait(lambda: listener.failures >= 1)
    finally:
        listener.stop()
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE visits_away RENAME TO visits"))
        edge.disconnect()
        edge.loop_stop()
    again = Listener(db, mosquitto.url, client_id=client_id).start()
    try:
        assert _wait(lambda: again.counts[Outcome.STORED] >= 1)
    finally:
        again.stop()
    with db.sessions() as s:
        assert s.scalar(select(Visit.event_id)) == str(arrival.event_id)


def test_listener_waits_for_a_broker_that_starts_later(db, tmp_path):
    from tests.broker import free_port

    _, device_id = add_store_and_device(db)
    port = free_port()
    listener = Listener(db, f"mqtt://127.0.0.1:{port}", client_id=f"cloud-{uuid.uuid4().hex[:6]}").start(timeout=0.5)
    try:
        assert not listener.subscribed.is_set()               # no broker yet: start() returned anyway
        broker = MosquittoBroker(tmp_path / "late").start(port=port)
        try:
            assert _wait(listener.subscribed.is_set, timeout=15)
            edge = _device_client(broker)
            arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 5))
            edge.publish(proto.events_topic(device_id), proto.dump_payload(arrival), qos=1).wait_for_publish(5)
            edge.disconnect()
            edge.loop_stop()
            assert _wait(lambda: listener.counts[Outcome.STORED] == 1)
        finally:
            broker.stop()
    finally:
        listener.stop()


def test_enrolment_with_consent_activates_the_customer_and_calls_the_welcome_hook(db, mosquitto):
    _, device_id = add_store_and_device(db)
    activated = []
    listener = Listener(db, mosquitto.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}",
                        on_activated=activated.append).start()
    edge = _device_client(mosquitto)
    customer = uuid.uuid4()
    try:
        for status in ("pending", "active"):
            consent = proto.Consent(recorded_by="staff:jo", recorded_at=utc(2026, 1, 5), text_version="2026-01")
            event = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 5),
                                         customer_id=customer, status=status, short_code="K7",
                                         display_name="Jun" if status == "active" else None,
                                         consent=consent if status == "active" else None)
            edge.publish(proto.events_topic(device_id), proto.dump_payload(event), qos=1).wait_for_publish(5)
        assert _wait(lambda: listener.counts[Outcome.STORED] == 2)
    finally:
        edge.disconnect()
        edge.loop_stop()
        listener.stop()
    assert activated == [str(customer)]                   # only the activation, not the pending enrolment
    with db.sessions() as s:
        jun = s.get(Customer, str(customer))
    assert (jun.status, jun.display_name, jun.source, jun.consent_by) == ("active", "Jun", "edge", "staff:jo")


def test_publish_all_sends_more_messages_than_mqtt_has_packet_ids(mosquitto):
    """A chain publish can exceed the 65,535 packet identifiers of MQTT: publish_all keeps a bounded window of
    unacknowledged messages instead of queueing everything first (found by bench/bench_chain.py)."""
    from dangol_cloud.mqtt import publish_all

    client = connect(mosquitto.url, "chain-publisher")
    try:
        n = 70_000
        assert publish_all(client, ((f"bench/{i % 50}", b"x", False) for i in range(n))) == n
    finally:
        client.loop_stop()
        client.disconnect()
