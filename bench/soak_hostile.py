"""Soak of the cloud with a hostile device next to a legitimate one (issue 9): nothing a stolen device sends
may stall, corrupt or slow down the chain.

Run: ``.venv/bin/python bench/soak_hostile.py [--minutes 10]`` (quick check: ``--minutes 1``). Needs
``mosquitto`` with its dynamic-security plugin (Debian package ``mosquitto``).

What runs (all real, on this machine):

* a Mosquitto configured by ``dangol-cloud broker-config`` (dynamic-security plugin: each device login pinned to
  its own client id and its store's topics);
* ``dangol-cloud serve`` in its own process (SQLite; dashboard on waitress, MQTT listener, background jobs);
* the legitimate device of store A ("Main Street"): the edge's own MQTT client (:class:`dangol_edge.sync.MQTTSync`
  with its outbox in a ``state.sqlite``) enrols a regular (pending, then active with consent), then reports an
  arrival of that regular every second and an unknown face every fifth second;
* the hostile device of store B ("Harbour", its stolen login, MQTT 3.1.1) publishing on its own events topic every
  second one message of each kind: **malformed** (truncated JSON), **oversized** (a 70 KiB event), **deep**
  (``[`` × 200,000), **replayed** (an arrival of store A's device re-sent with B's device id) and **cross-store**
  (in turn: an ``erasure-done`` for store A's regular, an enrolment renaming her with a forged consent, an
  arrival of her at store B);
* a dashboard probe: an owner signed in, ``GET /`` (Today) and ``GET /stores/`` every 2 s, timed.

At the end it waits until the legitimate outbox is empty and every legitimate event is in the database (at most
60 s), and prints: legitimate events produced (taken by device A's outbox) / acknowledged by the broker / applied
by the cloud (``device_events`` rows of device A; produced and acknowledged are counted by :class:`OutboxTally`,
since the edge deletes an outbox row once the broker acknowledges it) and the visits recorded; the time from an
arrival's ``ts`` to the cloud storing it (p50, p95, max); hostile messages sent (broker-acknowledged, by kind)
vs dead-lettered (``device_trust`` counts of device B: refused + dead letters), the ``dead_letters`` rows kept (at
most 1,000); store A's regular unchanged (name, consent, purchases); dashboard response times (p50, p95, max) and
any non-200.

Exit status 0 when every legitimate event was applied, every hostile message was dead-lettered, the regular is
intact and every dashboard request answered 200.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from http.cookiejar import CookieJar
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

import dangol_protocol as proto  # noqa: E402
from dangol_cloud.local_broker import MosquittoBroker, free_port  # noqa: E402

OWNER, OWNER_PW, CLOUD_PW = "owner@soak.example", "soak-owner-password", "soak-cloud-password"


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``xs`` (nearest rank); nan for an empty list."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def setup(work: Path, env: dict) -> dict:
    """Cloud database with two stores, a device each, an owner; broker-config files. Returns ids/passwords."""
    from dangol_cloud.cli import main as cli
    from dangol_cloud.crypto import decode_key
    from dangol_cloud.db import Database
    from dangol_cloud.models import Device, Store, User
    from dangol_cloud.security import hash_password, mosquitto_hash

    db = Database(env["DANGOL_DATABASE_URL"], data_key=decode_key(env["DANGOL_DATA_KEY"], "DANGOL_DATA_KEY"))
    db.migrate()
    ids = {"pw_a": secrets.token_urlsafe(16), "pw_b": secrets.token_urlsafe(16)}
    with db.transaction() as s:
        a, b = Store(name="Main Street", ref="main"), Store(name="Harbour", ref="harbour")
        s.add_all([a, b, User(email=OWNER, password_hash=hash_password(OWNER_PW), role="owner")])
        s.flush()
        da = Device(store_id=a.id, name="Main door", mqtt_username="device-main",
                    mqtt_password_hash=mosquitto_hash(ids["pw_a"]))
        db_ = Device(store_id=b.id, name="Harbour door", mqtt_username="device-harbour",
                     mqtt_password_hash=mosquitto_hash(ids["pw_b"]))
        s.add_all([da, db_])
        s.flush()
        ids.update(store_a=a.id, store_b=b.id, device_a=da.id, device_b=db_.id)
    db.dispose()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert cli(["broker-config", "--out", str(work / "auth")]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return ids


class OutboxTally:
    """The event ids the legitimate device's outbox took and the ones the broker acknowledged, counted by wrapping
    ``enqueue`` and ``mark_sent`` of its :class:`~dangol_edge.state.StateStore` (on that instance only; what they do
    is unchanged). One event a second for the soak's minutes: the sets stay small."""

    def __init__(self, state) -> None:
        self.taken: set[str] = set()
        self.acked: set[str] = set()
        self._lock = threading.Lock()
        enqueue, mark_sent = state.enqueue, state.mark_sent

        def recording_enqueue(event_id, topic, payload):
            taken = enqueue(event_id, topic, payload)
            if taken:
                with self._lock:
                    self.taken.add(str(event_id))
            return taken

        def recording_mark_sent(event_id):
            mark_sent(event_id)
            with self._lock:
                self.acked.add(str(event_id))

        state.enqueue, state.mark_sent = recording_enqueue, recording_mark_sent

    def counts(self) -> tuple[int, int]:
        """(events taken, events of those acknowledged)."""
        with self._lock:
            return len(self.taken), len(self.taken & self.acked)


class Dashboard:
    """An owner signed in to the dashboard; :meth:`probe` times ``GET /`` and ``GET /stores/``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.times: list[float] = []
        self.errors: list[str] = []
        page = self.opener.open(base + "/login", timeout=30).read().decode()
        token = html.unescape(re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1))
        body = urllib.parse.urlencode({"csrf_token": token, "email": OWNER, "password": OWNER_PW}).encode()
        self.opener.open(urllib.request.Request(base + "/login", data=body), timeout=30).read()

    def probe(self) -> None:
        for path in ("/", "/stores/"):
            start = time.perf_counter()
            try:
                with self.opener.open(self.base + path, timeout=30) as resp:
                    resp.read()
                    if resp.status != 200 or resp.url.endswith("/login"):
                        self.errors.append(f"{path}: {resp.status} {resp.url}")
            except Exception as exc:  # recorded and reported: the soak's verdict counts it
                self.errors.append(f"{path}: {exc}")
            self.times.append(time.perf_counter() - start)


class Hostile:
    """Store B's stolen login publishing one message of each hostile kind per call of :meth:`burst`."""

    def __init__(self, broker, ids: dict, regular: str) -> None:
        self.ids, self.regular = ids, regular
        self.topic = proto.events_topic(ids["device_b"])
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(ids["device_b"]),
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set("device-harbour", ids["pw_b"])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.sent: dict[str, int] = {k: 0 for k in ("malformed", "oversized", "deep", "replayed", "cross-store")}
        self.n = 0
        self.captured: list[bytes] = []  # legitimate arrivals of store A, to replay

    def _event(self, cls, **fields) -> bytes:
        return proto.dump_payload(cls(event_id=uuid.uuid4(), device_id=uuid.UUID(self.ids["device_b"]),
                                      ts=datetime.now(timezone.utc), **fields))

    def burst(self) -> None:
        self.n += 1
        regular = uuid.UUID(self.regular)
        cross = [lambda: self._event(proto.ErasureDoneEvent, customer_ids=[regular]),
                 lambda: self._event(proto.EnrolmentEvent, customer_id=regular, status="active", display_name="Hacked",
                                     consent=proto.Consent(recorded_by="attacker", text_version="evil",
                                                           recorded_at=datetime.now(timezone.utc))),
                 lambda: self._event(proto.ArrivalEvent, customer_id=regular, confidence=0.99)][self.n % 3]
        replay = None
        if self.captured:
            body = json.loads(self.captured[self.n % len(self.captured)])
            body["device_id"] = self.ids["device_b"]
            replay = json.dumps(body).encode()
        kinds = {"malformed": b'{"schema": "event/1", "kind": "arrival", "event_id": "',
                 "oversized": json.dumps({"schema": "event/1", "kind": "arrival", "pad": "x" * 70_000}).encode(),
                 "deep": b"[" * 200_000, "replayed": replay, "cross-store": cross()}
        for kind, payload in kinds.items():
            if payload is None:
                continue
            info = self.client.publish(self.topic, payload, qos=1)
            info.wait_for_publish(10)
            if info.is_published():
                self.sent[kind] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    from dangol_edge.config import MQTTConfig
    from dangol_edge.crypto import FieldCipher, new_key, parse_key
    from dangol_edge.state import StateStore
    from dangol_edge.sync import MQTTSync

    work = Path(tempfile.mkdtemp(prefix="dangol-soak-hostile-"))
    data_key = base64.b64encode(secrets.token_bytes(32)).decode()
    port = free_port()
    env = {"DANGOL_DATABASE_URL": f"sqlite:///{work / 'cloud.sqlite'}", "DANGOL_DATA_KEY": data_key,
           "DANGOL_CLOUD_HOME": str(work / "home"), "DANGOL_MQTT_URL": f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:0"}
    ids = setup(work, env)
    # the dynamic-security plugin as broker-config configures it (its file decides access and queue limits)
    broker = MosquittoBroker(work / "mosquitto", config_file=work / "auth" / "dangol-dynsec.conf",
                             log_types=()).start()
    env["DANGOL_MQTT_URL"] = f"mqtt://cloud:{CLOUD_PW}@{broker.host}:{broker.port}"
    cloud = subprocess.Popen([str(REPO / ".venv" / "bin" / "dangol-cloud"), "serve", "--port", str(port)],
                             env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=open(work / "cloud.log", "w"))
    state = sync = hostile = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                dash = Dashboard(f"http://127.0.0.1:{port}")
                break
            except OSError:
                if time.monotonic() > deadline or cloud.poll() is not None:
                    raise SystemExit(f"dangol-cloud serve did not start; see {work / 'cloud.log'}")
                time.sleep(0.5)
        state = StateStore(work / "edge" / "state.sqlite", cipher=FieldCipher(parse_key(new_key(), "soak"))).open()
        tally = OutboxTally(state)
        sync = MQTTSync(MQTTConfig(url=f"mqtt://device-main:{ids['pw_a']}@{broker.host}:{broker.port}",
                                   keepalive_s=10, reconnect_min_s=1, reconnect_max_s=5),
                        uuid.UUID(ids["device_a"]), uuid.UUID(ids["store_a"]), state)
        sync.start()
        regular = uuid.uuid4()
        now = datetime.now(timezone.utc)
        sync.send_event(proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(ids["device_a"]), ts=now,
                                             customer_id=regular, status="pending", short_code="4711"))
        sync.send_event(proto.EnrolmentEvent(
            event_id=uuid.uuid4(), device_id=uuid.UUID(ids["device_a"]), ts=now, customer_id=regular, status="active",
            display_name="Mina Park", consent=proto.Consent(recorded_by="staff:jo", recorded_at=now,
                                                            text_version="2026-01")))
        hostile = Hostile(broker, ids, str(regular))
        end = time.monotonic() + args.minutes * 60
        tick = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            tick += 1
            arrival = proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(ids["device_a"]),
                                         ts=datetime.now(timezone.utc), customer_id=None if tick % 5 == 0 else regular,
                                         confidence=None if tick % 5 == 0 else 0.8)
            sync.send_event(arrival)
            if len(hostile.captured) < 20:
                hostile.captured.append(proto.dump_payload(arrival))
            hostile.burst()
            if tick % 2 == 0:
                dash.probe()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        hostile.close()
        return report(work, env, ids, state, tally, dash, hostile, str(regular))
    finally:
        if sync is not None:
            sync.stop()
        if state is not None:
            state.close()
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(30)
        except subprocess.TimeoutExpired:
            cloud.kill()
        broker.stop()
        print(f"work folder: {work}")


def report(work: Path, env: dict, ids: dict, state, tally: OutboxTally, dash: Dashboard, hostile: Hostile,
           regular: str) -> int:
    """Wait for the legitimate events to be applied, then print the figures; returns the exit status."""
    from sqlalchemy import func, select

    from dangol_cloud.crypto import decode_key
    from dangol_cloud.db import Database
    from dangol_cloud.models import Customer, DeadLetter, DeviceEvent, DeviceTrust, Visit

    produced, _ = tally.counts()
    db = Database(env["DANGOL_DATABASE_URL"], data_key=decode_key(env["DANGOL_DATA_KEY"], "DANGOL_DATA_KEY"))
    sent_hostile = sum(hostile.sent.values())
    deadline = time.monotonic() + 60
    while True:
        with db.sessions() as s:
            applied = s.scalar(select(func.count()).select_from(DeviceEvent)
                               .where(DeviceEvent.device_id == ids["device_a"]))
            trust = s.get(DeviceTrust, ids["device_b"])
            dead = (trust.refused + trust.dead_letters) if trust else 0
        if (applied >= produced and dead >= sent_hostile and state.outbox_depth() == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    with db.sessions() as s:
        latencies = [(r - t).total_seconds() for r, t in s.execute(
            select(DeviceEvent.received_at, DeviceEvent.ts).where(DeviceEvent.device_id == ids["device_a"],
                                                                  DeviceEvent.kind == "arrival"))]
        visits = s.scalar(select(func.count()).select_from(Visit).where(Visit.device_id == ids["device_a"]))
        visits_b = s.scalar(select(func.count()).select_from(Visit).where(Visit.device_id == ids["device_b"]))
        kept = s.scalar(select(func.count()).select_from(DeadLetter))
        by_kind = dict(s.execute(select(DeadLetter.kind, func.count()).group_by(DeadLetter.kind)).all())
        mina = s.get(Customer, regular)
        intact = mina is not None and (mina.display_name, mina.consent_by, mina.status) == ("Mina Park", "staff:jo",
                                                                                              "active")
        trust = s.get(DeviceTrust, ids["device_b"])
        refused, lettered = (trust.refused, trust.dead_letters) if trust else (0, 0)
    db.dispose()
    _, acked = tally.counts()
    times = [t * 1000 for t in dash.times]
    print(f"Hostile soak ({len(dash.times) // 2} dashboard probes, cloud: dangol-cloud serve on SQLite, broker: "
          "Mosquitto with broker-config's dynamic-security config):")
    print(f"  legit device A       events produced {produced} (2 enrolments + arrivals), acknowledged by the broker "
          f"{acked}, applied by the cloud {applied}; visits recorded {visits}")
    print(f"  legit latency        ts → stored  p50 {pct(latencies, .5):.3f} s   p95 {pct(latencies, .95):.3f} s   "
          f"max {max(latencies, default=float('nan')):.3f} s")
    print(f"  hostile device B     sent {sent_hostile} ({', '.join(f'{k} {v}' for k, v in hostile.sent.items())})")
    print(f"  dead-lettered        {refused + lettered} for device B (refused {refused}, unparseable {lettered}); "
          f"rows kept {kept} (newest 1,000; by kind {by_kind}); visits recorded for B {visits_b}")
    print(f"  store A's regular    {'intact (name, consent, status)' if intact else 'CHANGED OR ERASED'}")
    print(f"  dashboard            GET / and /stores/: p50 {pct(times, .5):.0f} ms   p95 {pct(times, .95):.0f} ms   "
          f"max {max(times, default=float('nan')):.0f} ms; errors {len(dash.errors)} {dash.errors[:3]}")
    ok = applied == produced and acked == produced and refused + lettered == sent_hostile and intact and not dash.errors
    print(f"  verdict              {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
