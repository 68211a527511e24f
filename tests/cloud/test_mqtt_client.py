"""The MQTT 5 helper shared by edge and cloud (:mod:`dangol_protocol.client`), with a real Mosquitto: the
cloud sees the broker's ACL refusals in PUBACK and SUBACK reason codes."""

from __future__ import annotations

import logging
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import dangol_protocol as proto
from dangol_cloud.events import Listener
from dangol_cloud.mqtt import MqttError, connect, publish_all
from dangol_protocol.client import BrokerAddress, MqttUrlError, parse_url, refusals
from tests.broker import MosquittoBroker

STORE_A, STORE_B = str(uuid.uuid4()), str(uuid.uuid4())
#: the cloud may write to store A only, and may not read device topics
ACL = f"user cloud\ntopic write dangol/v1/stores/{STORE_A}/#\n"


@pytest.mark.parametrize("url, expected", [
    ("mqtt://h", BrokerAddress("h", 1883, None, None, False)),
    ("mqtts://u:p%40ss@h", BrokerAddress("h", 8883, "u", "p@ss", True)),
    ("tcp://u@h:1999", BrokerAddress("h", 1999, "u", None, False)),
    ("ssl://h:8884", BrokerAddress("h", 8884, None, None, True)),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["", "http://u:s3cret@h", "mqtt://u:s3cret@:1883", "mqtt://u:s3cret@h:99999"])
def test_a_bad_url_is_refused_without_its_password(url):
    with pytest.raises(MqttUrlError, match="expected mqtt://") as caught:
        parse_url(url)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(BrokerAddress("h", 1, "u", "s3cret", False))


@pytest.fixture
def broker(tmp_path):
    with MosquittoBroker(tmp_path / "mq", users={"cloud": "cloud-pw"}, acl=ACL) as b:
        yield b


def test_an_acl_refusal_is_visible_to_the_cloud_publisher(broker):
    client = connect(broker.url_for("cloud"), "dangol-cloud-test")
    try:
        assert publish_all(client, [(proto.catalogue_topic(STORE_A), b"{}", True)]) == 1
        with pytest.raises(MqttError, match=f"refused the message to {proto.catalogue_topic(STORE_B)}.*Not authorized"):
            publish_all(client, [(proto.catalogue_topic(STORE_B), b"{}", True)])
    finally:
        client.disconnect()
        client.loop_stop()


def test_mqtt_3_would_not_have_seen_the_refusal(broker):
    """Why the cloud speaks MQTT 5: the same refused publish over 3.1.1 is acknowledged like a success."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v311", protocol=mqtt.MQTTv311)
    c.username_pw_set("cloud", "cloud-pw")
    codes = []
    c.on_publish = lambda client, u, mid, rc, props: codes.append(rc)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(proto.catalogue_topic(STORE_B), b"{}", qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
    assert refusals(codes) == []


@pytest.fixture
def dynsec(db, db_url, tmp_path, monkeypatch):
    """Two stores with a device each, and a real Mosquitto with the dynamic-security configuration of
    ``dangol-cloud broker-config`` (which, unlike an ACL file, refuses a subscription in the SUBACK)."""
    from dangol_cloud.cli import main as cli

    from .test_device_trust import CLOUD_PW, Chain, DynsecBroker

    chain = Chain(db)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:1883")
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["broker-config", "--out", str(tmp_path / "auth")]) == 0
    with DynsecBroker(tmp_path / "dynsec", tmp_path / "auth") as b:
        yield chain, b


def test_the_listener_reports_a_refused_subscription(dynsec, db, caplog):
    """A listener started with a device's login may not subscribe to every device's events: the SUBACK's
    reason codes say so and it never counts itself subscribed."""
    chain, b = dynsec
    caplog.set_level(logging.ERROR, logger="dangol_cloud.events")
    listener = Listener(db, b.url_as(chain.user_a, "pw-a"), client_id=proto.device_client_id(chain.device_a))
    listener.start(timeout=3)
    try:
        assert not listener.subscribed.is_set()
    finally:
        listener.stop()
    assert "refused the listener's subscriptions" in caplog.text and "Not authorized" in caplog.text


def test_the_edge_reports_a_refused_subscription(dynsec, tmp_path, caplog):
    """The edge, through the same helper: a box configured with another store's id is refused its
    subscriptions (counted and logged) instead of waiting forever for a catalogue."""
    from dangol_edge.config import MQTTConfig
    from dangol_edge.state import StateStore
    from dangol_edge.sync import MQTTSync

    chain, b = dynsec
    state = StateStore(tmp_path / "state.sqlite").open()
    sync = MQTTSync(MQTTConfig(url=b.url_as(chain.user_a, "pw-a")), uuid.UUID(chain.device_a),
                    uuid.UUID(chain.store_b), state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        deadline = time.monotonic() + 10
        while sync.refused_subscriptions < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.refused_subscriptions == 3
    finally:
        sync.stop(timeout=1)
        state.close()
    assert "refused 3 of this device's subscriptions" in caplog.text
