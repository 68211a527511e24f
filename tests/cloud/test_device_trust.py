"""A stolen or misbehaving device cannot harm the chain (issue 9): regression tests of each row of the
attack table that concerns MQTT, against a real Mosquitto configured by ``dangol-cloud broker-config``
(dynamic-security plugin: every device login pinned to its own client id and its store's topics) and the
real cloud listener.

Two stores: A ("Main Street", device A) with its regular Mina Park (enrolled there, consent, purchases) and
B ("Harbour", device B, the attacker's stolen box)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.cli import main as cli
from dangol_cloud.erasure import erase_customer
from dangol_cloud.events import Listener, Outcome
from dangol_cloud.models import (
    AuditEntry, CatalogueItem, Customer, CustomerOrigin, DeadLetter, Device, DeviceTrust, Erasure, ErasureRequest,
    Purchase, Store, Visit, utcnow,
)
from dangol_cloud.security import mosquitto_hash
from tests.broker import MosquittoBroker

from .conftest import add_store_and_device, utc

CLOUD_PW = "cloud-secret"
LISTENER_ID = "dangol-cloud-listener"


class DynsecBroker(MosquittoBroker):
    """Mosquitto loading the configuration ``dangol-cloud broker-config`` wrote (``dangol-dynsec.conf``)."""

    def __init__(self, workdir, config_dir) -> None:
        super().__init__(workdir)
        self.config_dir = config_dir

    def _write_config(self):
        self._binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join([f"user {pwd.getpwuid(os.getuid()).pw_name}", f"listener {self.port} {self.host}",
                                   "persistence false", f"log_dest file {self.workdir / 'mosquitto.log'}",
                                   "log_type all", (self.config_dir / "dangol-dynsec.conf").read_text()]) + "\n")
        return conf

    def url_as(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@{self.host}:{self.port}"


class Chain:
    """Ids of the two stores, their devices (username, password) and store A's regular."""

    def __init__(self, db) -> None:
        self.store_a, self.device_a = add_store_and_device(db, device_password="pw-a")
        with db.transaction() as s:
            harbour = Store(name="Harbour", ref="harbour")
            s.add(harbour)
            s.flush()
            b = Device(store_id=harbour.id, name="Harbour door", mqtt_username="device-harbour",
                       mqtt_password_hash=mosquitto_hash("pw-b"))
            latte = CatalogueItem(ref="latte", name="Caffè latte", category="Coffee", price=3.8)
            mina = Customer(display_name="Mina Park", status="active", source="edge", consent_by="staff:jo",
                            consent_at=utcnow() - timedelta(days=30), consent_text_version="2026-01")
            s.add_all([b, latte, mina])
            s.flush()
            s.add(CustomerOrigin(customer_id=mina.id, store_id=self.store_a, device_id=self.device_a))
            s.add_all(Purchase(customer_id=mina.id, item_id=latte.id, quantity=1, amount=3.8, store_id=self.store_a,
                               ts=utcnow() - timedelta(days=d), source="pos", idempotency_key=f"r-{d}")
                      for d in (1, 2, 3))
            self.store_b, self.device_b, self.mina = harbour.id, b.id, mina.id
            self.user_a = s.get(Device, self.device_a).mqtt_username
        self.user_b = "device-harbour"


@pytest.fixture
def chain(db):
    return Chain(db)


@pytest.fixture
def broker(db, db_url, chain, tmp_path, monkeypatch):
    """A real Mosquitto with the dynamic-security configuration from ``dangol-cloud broker-config``."""
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:1883")
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["broker-config", "--out", str(tmp_path / "auth")]) == 0
    with DynsecBroker(tmp_path / "mosquitto", tmp_path / "auth") as b:
        yield b


@pytest.fixture
def listener(db, broker):
    lst = Listener(db, broker.url_as("cloud", CLOUD_PW), client_id=LISTENER_ID).start()
    assert lst.subscribed.is_set(), "the cloud listener could not subscribe"
    yield lst
    lst.stop()


class Device_:
    """A device's MQTT client logged in with its own credentials (MQTT 3.1.1, like a minimal attacker)."""

    def __init__(self, broker, user: str, password: str, client_id: str) -> None:
        self.connack = threading.Event()
        self.rc = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.connack.wait(5)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.rc = reason_code
        self.connack.set()

    @property
    def accepted(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_b(broker, chain):
    d = Device_(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_b))
    assert d.accepted, f"device B refused: {d.rc}"
    yield d
    d.close()


@pytest.fixture
def device_a(broker, chain):
    d = Device_(broker, chain.user_a, "pw-a", proto.device_client_id(chain.device_a))
    assert d.accepted, f"device A refused: {d.rc}"
    yield d
    d.close()


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _handled(listener) -> int:
    return sum(listener.counts.values())


def _trust(db, device_id) -> tuple[int, int]:
    with db.sessions() as s:
        row = s.get(DeviceTrust, device_id)
        return (row.refused, row.dead_letters) if row else (0, 0)


def _event(cls, device_id, **fields):
    return proto.dump_payload(cls(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=fields.pop("ts", utcnow()),
                                  **fields))


# --- erasure-done forgery --------------------------------------------------------------------------------------
def test_forged_erasure_done_from_another_store_erases_nothing(db, chain, listener, device_b):
    """Row 1: store B's login sent erasure-done (no erasure id, or an invented one) naming store A's regular,
    whose id every store sees in the retained menus: it erased her and all her purchases chain-wide."""
    topic = proto.events_topic(chain.device_b)
    device_b.send(topic, _event(proto.ErasureDoneEvent, chain.device_b, customer_ids=[uuid.UUID(chain.mina)]))
    device_b.send(topic, _event(proto.ErasureDoneEvent, chain.device_b, erasure_id=uuid.uuid4(),
                                customer_ids=[uuid.UUID(chain.mina)]))
    assert _wait(lambda: listener.counts[Outcome.REFUSED] == 2)
    with db.sessions() as s:
        assert s.get(Customer, chain.mina).display_name == "Mina Park"
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == chain.mina)) == 3
        assert s.scalar(select(func.count()).select_from(Erasure)) == 0
        assert s.scalar(select(func.count()).select_from(ErasureRequest)) == 0
        assert not s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("erasure%"))).all()
    assert _trust(db, chain.device_b) == (2, 0)


def test_erasure_done_only_answers_an_erasure_sent_to_that_device(db, chain):
    """An erasure issued to store A's device cannot be confirmed by store B's device; A's answer completes it."""
    from dangol_cloud.events import handle_message

    with db.transaction() as s:
        erasure_id = erase_customer(s, chain.mina, actor="owner@cafe.example").id
        s.get(Erasure, erasure_id).targets = [chain.device_a]  # sent to store A's device only
    done = {d: _event(proto.ErasureDoneEvent, d, erasure_id=uuid.UUID(erasure_id), customer_ids=[uuid.UUID(chain.mina)])
            for d in (chain.device_b, chain.device_a)}
    assert handle_message(db, proto.events_topic(chain.device_b), done[chain.device_b]) is Outcome.REFUSED
    with db.sessions() as s:
        assert s.get(Erasure, erasure_id).confirmed_by == []
    assert handle_message(db, proto.events_topic(chain.device_a), done[chain.device_a]) is Outcome.STORED
    with db.sessions() as s:
        assert s.get(Erasure, erasure_id).completed_at is not None


# --- enrolment: cross-store rewrite and forged consent ---------------------------------------------------------
def test_enrolment_cannot_rename_another_stores_customer_or_forge_consent(db, chain, listener, device_b):
    """Row 2: an enrolment from any device with another store's customer id rewrote the name and forged a
    consent record (recorded_by "attacker", text version "evil")."""
    forged = proto.Consent(recorded_by="attacker", recorded_at=utcnow(), text_version="evil")
    topic = proto.events_topic(chain.device_b)
    device_b.send(topic, _event(proto.EnrolmentEvent, chain.device_b, customer_id=uuid.UUID(chain.mina),
                                status="active", display_name="Hacked", consent=forged))
    device_b.send(topic, _event(proto.EnrolmentEvent, chain.device_b, customer_id=uuid.UUID(chain.mina),
                                status="pending"))
    assert _wait(lambda: listener.counts[Outcome.REFUSED] == 2)
    with db.sessions() as s:
        mina = s.get(Customer, chain.mina)
        assert (mina.display_name, mina.status, mina.consent_by, mina.consent_text_version) == \
            ("Mina Park", "active", "staff:jo", "2026-01")
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "consent-recorded")) == 0
    assert _trust(db, chain.device_b) == (2, 0)


def test_consent_only_for_a_customer_pending_on_that_device(db, chain, listener, device_a, device_b):
    """Device A enrols a new customer (pending) and activates them with consent; device B of another store
    cannot then change them; device A cannot re-record consent once active."""
    jun = uuid.uuid4()
    consent = proto.Consent(recorded_by="staff:jo", recorded_at=utcnow(), text_version="2026-01")
    for status in ("pending", "active"):
        device_a.send(proto.events_topic(chain.device_a), _event(
            proto.EnrolmentEvent, chain.device_a, customer_id=jun, status=status,
            display_name="Jun" if status == "active" else None, consent=consent if status == "active" else None))
    assert _wait(lambda: listener.counts[Outcome.STORED] == 2)
    again = proto.Consent(recorded_by="someone", recorded_at=utcnow(), text_version="2099-01")
    device_a.send(proto.events_topic(chain.device_a), _event(proto.EnrolmentEvent, chain.device_a, customer_id=jun,
                                                             status="active", display_name="Other", consent=again))
    device_b.send(proto.events_topic(chain.device_b), _event(proto.EnrolmentEvent, chain.device_b, customer_id=jun,
                                                             status="active", display_name="Other", consent=again))
    assert _wait(lambda: listener.counts[Outcome.REFUSED] == 2)
    with db.sessions() as s:
        customer = s.get(Customer, str(jun))
        assert (customer.display_name, customer.consent_by, customer.status) == ("Jun", "staff:jo", "active")
        assert s.get(CustomerOrigin, str(jun)).store_id == chain.store_a


# --- deep JSON ---------------------------------------------------------------------------------------------------
def test_deeply_nested_json_flood_is_dead_lettered_and_arrivals_keep_flowing(db, chain, listener, device_a):
    """Row 3: ~20 payloads of ``[`` × 200k on a device's own events topic raised RecursionError, were never
    acknowledged, filled the broker's in-flight window and froze all event processing."""
    topic = proto.events_topic(chain.device_a)
    poison = [b"[" * 200_000] * 20 + [b"[" * 60_000] * 20  # the second kind fits the size limit: depth counts
    arrivals = []
    for i, payload in enumerate(poison):
        device_a.send(topic, payload)
        if i % 8 == 7:
            arrivals.append(uuid.uuid4())
            device_a.send(topic, proto.dump_payload(proto.ArrivalEvent(
                event_id=arrivals[-1], device_id=uuid.UUID(chain.device_a), ts=utcnow(),
                customer_id=uuid.UUID(chain.mina), confidence=0.8)))
    assert _wait(lambda: _handled(listener) == len(poison) + len(arrivals), timeout=30), listener.counts
    assert listener.counts[Outcome.INVALID] == len(poison) and listener.counts[Outcome.STORED] == len(arrivals)
    with db.sessions() as s:
        visits = set(s.scalars(select(Visit.event_id).where(Visit.customer_id == chain.mina)))
        letters = s.scalars(select(DeadLetter).where(DeadLetter.device_id == chain.device_a)).all()
    assert visits == {str(a) for a in arrivals}
    assert len(letters) == len(poison) and {letter.kind for letter in letters} == {"invalid"}
    assert sum("deeper than" in letter.reason for letter in letters) == 20
    assert _trust(db, chain.device_a) == (0, len(poison))


# --- timestamps, health, fake arrivals --------------------------------------------------------------------------
def test_far_future_or_ancient_timestamps_are_never_stored(db, chain, listener, device_a):
    """Row 4 (MQTT side): an arrival with ts 9999-12-31T23:59:59Z was stored and made the pages fail."""
    topic = proto.events_topic(chain.device_a)
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    skewed = utcnow() + timedelta(hours=2)  # a fast clock: clamped to the time received
    for ts in (far, datetime(1, 1, 1, tzinfo=timezone.utc), skewed):
        device_a.send(topic, _event(proto.ArrivalEvent, chain.device_a, ts=ts))
    device_a.send(proto.status_topic(chain.device_a), proto.dump_payload(
        proto.Status(device_id=uuid.UUID(chain.device_a), state="online", ts=far)), retain=True)
    assert _wait(lambda: _handled(listener) == 4)
    assert listener.counts[Outcome.REFUSED] == 2
    with db.sessions() as s:
        (visit_ts,) = s.scalars(select(Visit.ts)).all()
        status_at = s.get(Device, chain.device_a).status_at
    assert visit_ts <= utcnow() and visit_ts > utcnow() - timedelta(minutes=1)
    assert status_at <= utcnow()


def test_absurd_health_values_and_fake_arrivals_are_refused(db, chain, listener, device_b):
    """Row 14 (MQTT side): fps 1e308 was accepted and shown; store B's device could record visits of store A's
    regular."""
    status = {"schema": "status/1", "device_id": chain.device_b, "state": "online", "ts": utcnow().isoformat(),
              "health": {"camera": "ok", "fps": 1e308, "gallery_size": 10**15, "queue_depth": 0}}
    device_b.send(proto.status_topic(chain.device_b), json.dumps(status).encode(), retain=True)
    device_b.send(proto.events_topic(chain.device_b), _event(proto.ArrivalEvent, chain.device_b,
                                                             customer_id=uuid.UUID(chain.mina), confidence=0.99))
    assert _wait(lambda: _handled(listener) == 2)
    assert listener.counts[Outcome.INVALID] == 1 and listener.counts[Outcome.REFUSED] == 1
    with db.sessions() as s:
        assert s.get(Device, chain.device_b).health is None
        assert s.scalar(select(func.count()).select_from(Visit)) == 0
    assert _trust(db, chain.device_b) == (1, 1)


def test_replayed_event_of_another_device_is_refused(db, chain):
    from dangol_cloud.events import handle_message

    arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(chain.device_a), ts=utcnow())
    assert handle_message(db, proto.events_topic(chain.device_a), proto.dump_payload(arrival)) is Outcome.STORED
    replay = arrival.model_copy(update={"device_id": uuid.UUID(chain.device_b)})
    assert handle_message(db, proto.events_topic(chain.device_b), proto.dump_payload(replay)) is Outcome.REFUSED
    assert handle_message(db, proto.events_topic(chain.device_a), proto.dump_payload(arrival)) is Outcome.DUPLICATE


# --- broker identity ----------------------------------------------------------------------------------------------
def test_a_device_login_cannot_take_over_the_cloud_listeners_session(db, chain, broker, listener, device_a):
    """Row 5: a device login could connect with the cloud listener's client id and kick the cloud off."""
    intruder = Device_(broker, chain.user_b, "pw-b", LISTENER_ID)
    try:
        assert intruder.rc is not None and intruder.rc.is_failure  # "not authorised"
        other = Device_(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_a))
        assert other.rc is not None and other.rc.is_failure        # nor as another device
        other.close()
    finally:
        intruder.close()
    time.sleep(0.5)
    assert listener.client.is_connected()
    arrival = _event(proto.ArrivalEvent, chain.device_a)
    device_a.send(proto.events_topic(chain.device_a), arrival)
    assert _wait(lambda: listener.counts[Outcome.STORED] == 1)  # the cloud still receives
    log = (broker.workdir / "mosquitto.log").read_text()
    assert f"Client {LISTENER_ID} already connected" not in log and "session taken over" not in log.lower()


def test_the_publisher_sees_a_publish_the_broker_refuses(db, chain, broker):
    """MQTT 5: a publish the broker's ACL refuses is an error naming the topic, not a silent success."""
    from dangol_cloud.mqtt import MqttError, connect, publish_all

    client = connect(broker.url_as(chain.user_b, "pw-b"), proto.device_client_id(chain.device_b))
    try:
        with pytest.raises(MqttError, match=f"refused the message to {proto.catalogue_topic(chain.store_a)}.*authori"):
            publish_all(client, [(proto.catalogue_topic(chain.store_a), b'{"forged": true}', True)], timeout=5)
        assert publish_all(client, [(proto.status_topic(chain.device_b), b"", True)], timeout=5) == 1  # its own topic
    finally:
        client.disconnect()
        client.loop_stop()


def test_dynsec_config_pins_every_device_to_its_own_client_id_and_store(db, chain, broker):
    config = json.loads((broker.config_dir / "dynamic-security.json").read_text())
    clients = {c["username"]: c for c in config["clients"]}
    assert clients[chain.user_b]["clientid"] == proto.device_client_id(chain.device_b)
    assert "clientid" not in clients["cloud"]
    roles = {r["rolename"]: r for r in config["roles"]}
    b_topics = {a["topic"] for a in roles[f"device-{chain.device_b}"]["acls"]}
    assert not any(chain.store_a in t or chain.device_a in t for t in b_topics)
    assert config["defaultACLAccess"]["publishClientSend"] is False


# --- retained menus --------------------------------------------------------------------------------------------
def test_retained_menus_carry_the_first_name_only(db, chain, broker):
    """Row 12 (cloud side): every store's box received each regular's full display name. Now the menu goes only
    to the store that enrolled the customer (store A for Mina), with the first name only; store B gets none."""
    from dangol_cloud.models import Menu, ModelVersion
    from dangol_cloud.publishing import publish

    with db.transaction() as s:
        latte = s.scalar(select(CatalogueItem.id))
        s.add(ModelVersion(version="m-test", path="nowhere"))
        s.flush()
        s.add(Menu(customer_id=chain.mina, model_version="m-test", generated_at=utcnow(),
                   picks=[{"item_id": latte, "score": 1.0, "reasons": []}]))
    with db.transaction() as s:
        report = publish(s, broker.url_as("cloud", CLOUD_PW), catalogue=False)
    assert report.menus == 1

    def retained(user: str, password: str, device: str, store: str) -> list[bytes]:
        got = []
        done = threading.Event()
        box = Device_(broker, user, password, proto.device_client_id(device))

        def on_message(client, userdata, msg):
            got.append(msg.payload)
            done.set()

        box.client.on_message = on_message
        box.client.subscribe(proto.menus_wildcard(store), qos=1)
        try:
            done.wait(3)
        finally:
            box.close()
        return got

    (menu,) = retained(chain.user_a, "pw-a", chain.device_a, chain.store_a)
    assert json.loads(menu)["display_name"] == "Mina" and b"Park" not in menu
    assert retained(chain.user_b, "pw-b", chain.device_b, chain.store_b) == []


def test_time_bounds_are_named_in_the_refusal(db, chain):
    from dangol_cloud.device_trust import Refused, bounded_ts

    now = utc(2026, 6, 1)
    with pytest.raises(Refused, match="ts 9999"):
        bounded_ts(datetime(9999, 12, 31, tzinfo=timezone.utc), "ts", now)
    assert bounded_ts(now + timedelta(hours=3), "ts", now) == now
    assert bounded_ts(now - timedelta(days=30), "ts", now) == now - timedelta(days=30)


# --- migration 0004 ------------------------------------------------------------------------------------------------
def test_migration_0004_records_origins_and_repairs_far_future_times(db_url):
    """A database poisoned before the bounds existed (a 9999-12-31 arrival and status) is repaired by the
    upgrade, and customers enrolled by a device become customers of its store."""
    from sqlalchemy import text

    from dangol_cloud.db import Database, migrate

    from .conftest import DEV_KEY_BYTES

    old = Database(db_url, data_key=DEV_KEY_BYTES)
    migrate(old.engine, "0003")
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO stores (id, name, created_at) VALUES ('s1', 'Main', '2026-01-01')"))
        conn.execute(text("INSERT INTO devices (id, store_id, name, mqtt_username, mqtt_password_hash, created_at,"
                          " status_at) VALUES ('d1', 's1', 'Door', 'device-d1', 'x', '2026-01-01',"
                          " '9999-12-31 23:59:59')"))
        conn.execute(text("INSERT INTO customers (id, status, source, created_at) VALUES ('c1', 'pending', 'edge',"
                          " '2026-11-01 10:00:00')"))
        for event_id, kind, ts in (("e1", "enrolment", "2026-11-01 10:00:00"),
                                   ("e2", "arrival", "9999-12-31 23:59:59")):
            conn.execute(text("INSERT INTO device_events (event_id, device_id, kind, ts, received_at, payload) VALUES "
                              "(:e, 'd1', :k, :ts, '2026-11-02 08:00:00', :p)"),
                         {"e": event_id, "k": kind, "ts": ts, "p": json.dumps({"kind": kind, "customer_id": "c1"})})
        conn.execute(text("INSERT INTO visits (event_id, customer_id, device_id, store_id, ts, shown_items) VALUES "
                          "('e2', 'c1', 'd1', 's1', '9999-12-31 23:59:59', '[]')"))
    old.dispose()
    db = Database(db_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    try:
        with db.sessions() as s:
            origin = s.get(CustomerOrigin, "c1")
            assert (origin.store_id, origin.device_id) == ("s1", "d1")
            assert s.scalar(select(Visit.ts)) == datetime(2026, 11, 2, 8, tzinfo=timezone.utc)
            assert s.get(Device, "d1").status_at is None
    finally:
        db.dispose()


def test_an_erased_customers_id_cannot_be_enrolled_again(db, chain):
    """Every store saw the erased regular's id in the retained menus: no device may bring it back."""
    from dangol_cloud.events import handle_message

    with db.transaction() as s:
        erase_customer(s, chain.mina, actor="owner@cafe.example")
    again = _event(proto.EnrolmentEvent, chain.device_b, customer_id=uuid.UUID(chain.mina), status="pending")
    assert handle_message(db, proto.events_topic(chain.device_b), again) is Outcome.REFUSED
    with db.sessions() as s:
        assert s.get(Customer, chain.mina) is None


def test_broker_config_refuses_a_device_with_the_clouds_username(db, db_url, chain, tmp_path, monkeypatch, capsys):
    with db.transaction() as s:
        s.get(Device, chain.device_b).mqtt_username = "cloud"
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:1883")
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["broker-config", "--out", str(tmp_path / "auth")]) == 2
    assert "cloud's MQTT username" in " ".join(capsys.readouterr().err.split())


# --- the depth check before json.loads ------------------------------------------------------------------------------
def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4),
                                                                                inner, max_size=3), max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=JSON, limit=st.integers(0, 8))
def test_depth_check_agrees_with_the_decoded_structure(value, limit):
    """Brackets inside strings (escaped quotes included) never count; real nesting always does."""
    from dangol_protocol.parse import json_depth_exceeds

    assert json_depth_exceeds(json.dumps(value).encode(), limit) == (_depth(value) > limit)


def test_the_real_edge_client_works_with_the_generated_broker_config(db, chain, broker, listener, tmp_path):
    """The edge's own MQTT client (its pinned client id, its store's subscriptions, its events) is allowed
    everything it needs by broker-config's dynamic-security config: it gets its store's retained catalogue
    and menus, and its arrivals reach the cloud."""
    from dangol_cloud.models import Menu, ModelVersion
    from dangol_cloud.publishing import publish, publish_catalogue_version
    from dangol_edge.config import MQTTConfig
    from dangol_edge.crypto import FieldCipher, new_key, parse_key
    from dangol_edge.state import StateStore
    from dangol_edge.sync import MQTTSync

    with db.transaction() as s:
        latte = s.scalar(select(CatalogueItem.id))
        s.add(ModelVersion(version="m-test", path="nowhere"))
        s.flush()
        s.add(Menu(customer_id=chain.mina, model_version="m-test", generated_at=utcnow(),
                   picks=[{"item_id": latte, "score": 1.0, "reasons": []}]))
        publish_catalogue_version(s, published_by="owner@cafe.example")
    with db.transaction() as s:
        publish(s, broker.url_as("cloud", CLOUD_PW))
    state = StateStore(tmp_path / "edge" / "state.sqlite", cipher=FieldCipher(parse_key(new_key(), "t"))).open()
    sync = MQTTSync(MQTTConfig(url=broker.url_as(chain.user_a, "pw-a"), keepalive_s=5, reconnect_min_s=1,
                               reconnect_max_s=2), uuid.UUID(chain.device_a), uuid.UUID(chain.store_a), state)
    sync.start()
    try:
        assert _wait(lambda: state.catalogue() is not None and state.menu(chain.mina) is not None)
        assert state.menu(chain.mina).display_name == "Mina"
        sync.send_event(proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(chain.device_a), ts=utcnow(),
                                           customer_id=uuid.UUID(chain.mina), confidence=0.7))
        assert _wait(lambda: listener.counts[Outcome.STORED] >= 1 and state.outbox_depth() == 0)
        assert sync.rejected_events == 0
    finally:
        sync.stop()
        state.close()
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Visit).where(Visit.customer_id == chain.mina)) == 1


def test_the_listener_reports_subscriptions_the_broker_refuses(db, chain, broker, caplog):
    """MQTT 5 SUBACK reason codes: a listener whose login may not read device events says so (here: started,
    by mistake, with a device's login) instead of waiting silently."""
    lst = Listener(db, broker.url_as(chain.user_b, "pw-b"), client_id=proto.device_client_id(chain.device_b))
    try:
        lst.start(timeout=2)
        assert not lst.subscribed.is_set()
        assert _wait(lambda: "refused the listener's subscriptions" in caplog.text)
        assert "Not authorized" in caplog.text
    finally:
        lst.stop()
