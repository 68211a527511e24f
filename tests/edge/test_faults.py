"""Edge faults: a process killed mid-enrolment, MQTT over TLS with the right and a wrong CA, and the broker's
ACL as seen by the edge's own MQTT client. Real SQLite, real Mosquitto, real certificates (~12 s in all)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from dangol_edge.config import MQTTConfig
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
from dangol_protocol import ArrivalEvent, new_event_id
from dangol_protocol.topics import catalogue_topic, menu_topic
from tests.broker import MosquittoBroker
from tests.edge.test_systemd import _Client
from tests.edge.test_sync import wait_for

REPO = Path(__file__).resolve().parents[2]
K = 5  # templates per customer

# --- kill -9 during gallery writes ---------------------------------------------------------------------------
ENROLLER = """
import sys
import numpy as np
from dangol_edge.gallery import Gallery

path, seed, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
g = Gallery(path, "sha").open()
n = 0
while True:
    e = rng.standard_normal((k, 512)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    g.enroll(f"customer {seed}-{n}", e)
    n += 1
    print(n, flush=True)  # printed only after enroll() returned: committed
"""


def _gallery_facts(path: Path) -> dict:
    """integrity_check, customers, templates per customer (raw SQL), and the template count as Gallery sees it."""
    con = sqlite3.connect(path)  # recovers the WAL a killed writer left behind
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchall()
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
        customers = con.execute("SELECT COUNT(*) FROM customers").fetchone()[0]
        per = dict(con.execute("SELECT c.id, COUNT(t.id) FROM customers c LEFT JOIN templates t "
                               "ON t.customer_id = c.id GROUP BY c.id").fetchall())
        orphans = con.execute("SELECT COUNT(*) FROM templates WHERE customer_id NOT IN "
                              "(SELECT id FROM customers)").fetchone()[0]
    finally:
        con.close()
    return {"integrity": integrity, "fk": fk, "customers": customers, "per": per, "orphans": orphans}


def test_kill_9_during_enrolment_leaves_no_half_enrolled_customer(tmp_path, monkeypatch):
    """A writer SIGKILLed at random moments (5 rounds on the same file, each child reopening what the last
    one left): the file passes integrity_check, the gallery opens and decrypts every name and template, each
    customer has exactly K templates, and the customers are the ones the children reported committed
    (plus at most the one in flight when the signal landed)."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("DANGOL_GALLERY_KEY", key)  # the gallery seals names and templates (if it supports it)
    env = {**os.environ, "DANGOL_GALLERY_KEY": key, "PYTHONPATH": str(REPO)}
    path = tmp_path / "gallery.sqlite"
    expected = 0
    for seed, delay in enumerate((0.0, 0.013, 0.037, 0.071, 0.15)):
        child = subprocess.Popen([sys.executable, "-c", ENROLLER, str(path), str(seed), str(K)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        committed = [0]

        def read(out=child.stdout, box=committed):
            for line in out:
                box[0] = int(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # let it write a few customers, then kill it somewhere in its loop
        assert wait_for(lambda: committed[0] >= 3 or child.poll() is not None, timeout=30)
        assert child.poll() is None, f"the enroller died on its own: {child.stderr.read()}"
        time.sleep(delay + secrets.randbelow(1000) / 100_000)  # plus 0–10 ms of jitter
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        reader.join(5)
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        reported = committed[0]  # everything it printed was committed before the print

        facts = _gallery_facts(path)
        assert facts["integrity"] == [("ok",)], facts["integrity"]
        assert facts["fk"] == [] and facts["orphans"] == 0
        half = {cid: n for cid, n in facts["per"].items() if n != K}
        assert not half, f"round {seed}: customers with other than {K} templates: {half}"
        assert expected + reported <= facts["customers"] <= expected + reported + 1, (
            f"round {seed}: {facts['customers']} customers in the file, children reported {expected} + {reported}")
        expected = facts["customers"]
        with Gallery(path, "sha") as g:  # opens, and every sealed value opens under the key
            cs = g.customers()
            assert len(cs) == expected and all(c.templates == K for c in cs)
            assert all(c.display_name.startswith("customer ") for c in cs)
            assert all(len(g.templates(c.id)) == K for c in cs[-3:])
            hits = g.match(g.templates(cs[-1].id)[0]["embedding"], threshold=0.99, margin=0.0)
            assert hits[0].customer_id == cs[-1].id  # the last committed customer is searchable
    assert expected >= 15


# --- MQTT over TLS with a generated CA ----------------------------------------------------------------------
def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(d: Path, name: str, cert, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        p = d / f"{name}.key"
        p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        p.chmod(0o600)
    return d / f"{name}.crt"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1/localhost, and an unrelated CA with the same name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("certs")
    ca_key, ca = _ca("Dangol test CA")
    _other_key, other = _ca("Dangol test CA")  # same subject, different key: must not be trusted
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    return {"ca": _pem(d, "ca", ca, ca_key), "server": _pem(d, "server", server, key), "server_key": d / "server.key",
            "wrong_ca": _pem(d, "wrong-ca", other)}


class TLSBroker(MosquittoBroker):
    """tests/broker.py's Mosquitto (users → password file, no anonymous) with its one listener on TLS."""

    def __init__(self, workdir, certs: dict[str, Path], **kw):
        super().__init__(workdir, **kw)
        self.certs = certs

    def _write_config(self) -> Path:
        conf = super()._write_config()
        # options after the (only) listener line apply to it
        conf.write_text(conf.read_text() + f"cafile {self.certs['ca']}\ncertfile {self.certs['server']}\n"
                        f"keyfile {self.certs['server_key']}\nrequire_certificate false\ntls_version tlsv1.2\n")
        return conf


TLS_STORE, TLS_DEVICE = uuid.uuid4(), uuid.uuid4()


def _catalogue(store: uuid.UUID, version: int = 3) -> bytes:
    return json.dumps({"schema": "catalogue/1", "store_id": str(store), "version": version,
                       "published_at": dt.datetime.now(dt.timezone.utc).isoformat(), "currency": "KRW",
                       "items": [{"id": "latte", "name": "Latte", "price": 5000}]}).encode()


def _menu(store: uuid.UUID, customer: str, model_version: str = "m1") -> bytes:
    return json.dumps({"schema": "menu/1", "store_id": str(store), "customer_id": customer,
                       "model_version": model_version,
                       "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "items": [{"item_id": "latte", "score": 1.0}]}).encode()


def test_edge_mqtt_over_tls_trusts_only_its_ca(tmp_path, certs):
    """With the CA that signed the broker's certificate, MQTTSync connects over mqtts:// and caches the
    retained catalogue; with another CA (same name, other key), with plain mqtt:// on the TLS port, or with
    a wrong password it never connects and caches nothing."""
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    assert os.path.exists(mosquitto_passwd), "mosquitto_passwd missing (Debian package mosquitto)"
    with TLSBroker(tmp_path / "broker", certs, users={"cloud": "cloud-pw", "edge": "edge-pw"}) as broker:
        port = broker.port
        cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-cloud", protocol=mqtt.MQTTv311)
        cloud.username_pw_set("cloud", "cloud-pw")
        cloud.tls_set(ca_certs=str(certs["ca"]))  # verifies the chain and the name 127.0.0.1
        cloud.connect("127.0.0.1", port, keepalive=10)
        cloud.loop_start()
        syncs: dict[str, tuple[MQTTSync, StateStore]] = {}
        try:
            cloud.publish(catalogue_topic(TLS_STORE), _catalogue(TLS_STORE), qos=1, retain=True).wait_for_publish(5)

            def sync(name: str, url: str, ca: Path | None) -> tuple[MQTTSync, StateStore]:
                st = StateStore(tmp_path / f"{name}.sqlite").open()
                cfg = MQTTConfig(url=url, tls_ca=ca, keepalive_s=5, reconnect_min_s=1, reconnect_max_s=2)
                s = MQTTSync(cfg, uuid.uuid4() if name != "good" else TLS_DEVICE, TLS_STORE, st)
                syncs[name] = (s, st)
                s.start()
                return s, st

            # the failures first, all at once: each gets the same few seconds to (wrongly) connect
            sync("wrong-ca", f"mqtts://edge:edge-pw@127.0.0.1:{port}", certs["wrong_ca"])
            sync("plain", f"mqtt://edge:edge-pw@127.0.0.1:{port}", None)
            sync("bad-password", f"mqtts://edge:nope@127.0.0.1:{port}", certs["ca"])
            good, good_state = sync("good", f"mqtts://edge:edge-pw@127.0.0.1:{port}", certs["ca"])
            assert good.connected.wait(10), "MQTTSync did not connect over TLS with the right CA"
            assert wait_for(lambda: good_state.catalogue() is not None, timeout=10)
            assert good_state.catalogue().version == 3
            time.sleep(4)  # several reconnect attempts (back-off 1–2 s) for the others
            for name in ("wrong-ca", "plain", "bad-password"):
                s, st = syncs[name]
                assert not s.connected.is_set(), f"{name}: connected"
                assert st.catalogue() is None, f"{name}: cached the catalogue"
            assert good.connected.is_set()
        finally:
            for s, st in syncs.values():
                s.stop(timeout=1)
                st.close()
            cloud.disconnect()
            cloud.loop_stop()


# --- the ACL through the edge's own client ------------------------------------------------------------------
def _acl(cloud_user: str, devices: dict[str, tuple[str, str]]) -> str:
    """An ACL in the format ``dangol-cloud broker-config`` writes (cloud/broker_auth.py ``acl_text``) for
    ``devices`` = {mqtt username: (device id, store id)}. tests/edge/test_systemd.py checks the generator
    itself against the example broker config with bare MQTT clients."""
    out = [f"user {cloud_user}", "topic readwrite dangol/v1/#", ""]
    for user, (device, store) in devices.items():
        root = f"dangol/v1/stores/{store}"
        out += [f"user {user}", f"topic read {root}/catalogue", f"topic read {root}/menus/+",
                f"topic read {root}/erasures", f"topic write dangol/v1/devices/{device}/events",
                f"topic readwrite dangol/v1/devices/{device}/status", ""]
    return "\n".join(out)


def test_edge_client_cannot_read_another_store_or_speak_for_another_device(tmp_path, certs):
    """Per-device credentials and the cloud's ACL over TLS, seen through the edge's own client (MQTTSync):

    * device A's sync caches its own store's retained catalogue and menu; even when it subscribes to store
      B's topics itself, the broker delivers nothing of B's, retained or live (had it delivered, the sync
      would have counted an invalid message: it also drops other stores' payloads itself);
    * a sync that claims to be device B with device A's credentials gets its event acknowledged (MQTT 3.1.1
      PUBACKs a denied publish too) but it never reaches the cloud; device A's own events do.
    """
    store_a, store_b = uuid.uuid4(), uuid.uuid4()
    device_a, device_b = str(uuid.uuid4()), str(uuid.uuid4())
    user_a, user_b = f"device-{device_a}", f"device-{device_b}"
    cust_a, cust_b = str(uuid.uuid4()), str(uuid.uuid4())
    users = {"cloud": "cloud-secret", user_a: "pw-a", user_b: "pw-b"}
    acl = _acl("cloud", {user_a: (device_a, str(store_a)), user_b: (device_b, str(store_b))})
    syncs: list[tuple[MQTTSync, StateStore]] = []
    with TLSBroker(tmp_path / "broker", certs, users=users, acl=acl) as broker:
        cloud = _Client(broker.port, "cloud", "cloud-secret", ca=certs["ca"])
        try:
            assert cloud.connected()
            for store, cust, version in ((store_b, cust_b, 7), (store_a, cust_a, 5)):
                cloud.publish(catalogue_topic(store), _catalogue(store, version), retain=True)
                cloud.publish(menu_topic(store, cust), _menu(store, cust), retain=True)
            cloud.subscribe("dangol/v1/devices/+/events")

            def start(name: str, device: str) -> tuple[MQTTSync, StateStore]:
                st = StateStore(tmp_path / f"{name}.sqlite").open()
                cfg = MQTTConfig(url=f"mqtts://{user_a}:pw-a@127.0.0.1:{broker.port}", tls_ca=certs["ca"],
                                 keepalive_s=5, reconnect_min_s=1, reconnect_max_s=2)
                s = MQTTSync(cfg, uuid.UUID(device), store_a, st)
                syncs.append((s, st))
                s.start()
                assert s.connected.wait(10), f"{name} did not connect"
                return s, st

            sync_a, state_a = start("a", device_a)
            assert wait_for(lambda: state_a.catalogue() is not None and state_a.menu(cust_a) is not None, timeout=10)
            assert state_a.catalogue().version == 5
            # subscribe to store B by hand on the sync's own connection (retained messages come with the SUBACK)
            subacks: list = []
            sync_a._client.on_subscribe = lambda c, u, mid, rcs, p: subacks.append(rcs)
            sync_a._client.subscribe([(f"dangol/v1/stores/{store_b}/#", 1), (menu_topic(store_b, cust_b), 1)])
            assert wait_for(lambda: subacks, timeout=5)
            # then a live one of B's before a live one of A's (one connection: delivered in this order)
            cloud.publish(menu_topic(store_b, cust_b), _menu(store_b, cust_b, "live"))
            time.sleep(0.01)  # a later generated_at for A's fresh menu
            cloud.publish(menu_topic(store_a, cust_a), _menu(store_a, cust_a, "live"))
            assert wait_for(lambda: state_a.menu(cust_a).model_version == "live")
            assert sync_a.invalid_messages == 0, f"the broker delivered store B's messages to device A (SUBACK {subacks})"
            assert state_a.menu(cust_b) is None and str(state_a.catalogue().store_id) == str(store_a)

            # device A's credentials claiming to be device B
            forged, forged_state = start("forged", device_b)
            fake = ArrivalEvent(event_id=new_event_id(), device_id=uuid.UUID(device_b),
                                ts=dt.datetime.now(dt.timezone.utc))
            forged.send_event(fake)
            # MQTT 5: the broker answers 0x87 Not authorized; the event is reported and kept, never marked sent
            assert wait_for(lambda: forged.rejected_events >= 1, timeout=10)
            assert forged_state.outbox_depth() == 1
            real = ArrivalEvent(event_id=new_event_id(), device_id=uuid.UUID(device_a),
                                ts=dt.datetime.now(dt.timezone.utc))
            sync_a.send_event(real)
            own = f"dangol/v1/devices/{device_a}/events"
            assert cloud.wait(lambda: any(json.loads(p)["event_id"] == str(real.event_id)
                                          for t, p in cloud.messages if t == own), timeout=10)
            time.sleep(0.5)
            got = [json.loads(p).get("event_id") for t, p in cloud.messages if t.endswith("/events")]
            assert str(fake.event_id) not in got, "device A's credentials published as device B"
            assert f"dangol/v1/devices/{device_b}/events" not in cloud.topics()
        finally:
            for s, st in syncs:
                s.stop(timeout=1)
                st.close()
            cloud.close()
