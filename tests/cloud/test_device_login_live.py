"""A new door connects at once (owner-journey review, step 15): "Add device" creates the device's login and its role
on the running broker through the dynamic-security plugin (:func:`dangol_cloud.broker_auth.create_device_login`),
with exactly the rights ``dangol-cloud broker-config`` writes for it — its own store's catalogue, menus and erasures,
its own events and status, pinned to its own client id — so it may act only within its own store. A broker that
cannot be told (down, or a configuration from an older broker-config) still gets the device created, and the page
says to run broker-config and *restart* Mosquitto, as before. Against a real Mosquitto 2.0 with the plugin; the door
is a paho MQTT 5 client, so a refused publish or subscription is seen in its PUBACK/SUBACK reason code.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from html import unescape

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.models import Device, utcnow

from .conftest import DEV_KEY_BYTES
from .test_device_trust import CLOUD_PW, DynsecBroker
from .test_security_review_fixes import RELOAD, _broker_site, _owner
from .test_web_hardening import csrf_of


class _Door:
    """A door's MQTT 5 client with the credentials the dashboard showed; notes every CONNACK/SUBACK/PUBACK."""

    def __init__(self, broker, user: str, password: str, client_id: str) -> None:
        self.connack, self.acks = threading.Event(), {}
        self.rc = None
        self._acked = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._ack(mid, list(codes))
        self.client.on_publish = lambda c, u, mid, code, p: self._ack(mid, [code])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.connack.wait(5)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.rc = reason_code
        self.connack.set()

    def _ack(self, mid, codes) -> None:
        with self._acked:
            self.acks[mid] = codes
            self._acked.notify_all()

    def _wait(self, mid) -> bool:
        """True if the broker granted (reason code < 0x80) the request ``mid``."""
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.acks, 5), f"no acknowledgement of {mid}"
            return not any(code.is_failure for code in self.acks[mid])

    @property
    def accepted(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def may_subscribe(self, topic: str) -> bool:
        return self._wait(self.client.subscribe(topic, qos=1)[1])

    def may_publish(self, topic: str, payload: bytes = b"{}") -> bool:
        return self._wait(self.client.publish(topic, payload, qos=1).mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _add_door(owner, store_id: str, name: str = "Back door") -> tuple[str, dict]:
    """(page text, {device, user, password}) of "Add device" for ``store_id`` on the Stores page."""
    token = csrf_of(owner.get("/stores/").get_data(as_text=True))
    response = owner.post(f"/stores/{store_id}/devices", data={"csrf_token": token, "name": name})
    assert response.status_code == 200, response.status_code
    page = unescape(response.get_data(as_text=True))
    shown = {"user": re.search(r'id="mqtt-username">([^<]+)<', page).group(1).strip(),
             "password": re.search(r'id="mqtt-password">([^<]+)<', page).group(1).strip(),
             "device": re.search(r'\[device\]\nid = "([0-9a-f-]{36})"', page).group(1),
             "store": re.search(r'store_id = "([0-9a-f-]{36})"', page).group(1)}
    return page, shown


def _broker_steps(page: str) -> str:
    return re.search(r'id="broker-steps">(.*?)</pre>', page, re.S).group(1)


def _arrival(device_id: str) -> bytes:
    return proto.dump_payload(proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow()))


def test_a_new_door_connects_at_once_and_acts_only_within_its_own_store(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    try:
        page, shown = _add_door(_owner(app), chain.store_a)
        with db.sessions() as s:
            device = s.scalar(select(Device).where(Device.name == "Back door"))
        assert (shown["device"], shown["store"], shown["user"]) == (device.id, chain.store_a, device.mqtt_username)
        door = _Door(broker, shown["user"], shown["password"], proto.device_client_id(device.id))
        try:
            assert door.accepted, f"the new door was refused before any restart: {door.rc}"
            # its own store and its own topics
            for topic, _ in proto.store_subscriptions(chain.store_a):
                assert door.may_subscribe(topic), topic
            assert door.may_publish(proto.events_topic(device.id), _arrival(device.id))
            assert door.may_publish(proto.status_topic(device.id))
            assert door.may_subscribe(proto.status_topic(device.id))
            # nothing of the other store, nor of another device of its own store, nor the broker's logins
            for topic, _ in proto.store_subscriptions(chain.store_b):
                assert not door.may_subscribe(topic), topic
            for other in (chain.device_b, chain.device_a):
                assert not door.may_publish(proto.events_topic(other), _arrival(other)), other
                assert not door.may_publish(proto.status_topic(other)), other
            assert not door.may_subscribe("dangol/v1/#") and not door.may_subscribe("#")
            assert not door.may_publish(proto.catalogue_topic(chain.store_a))
            assert not door.may_subscribe("$CONTROL/dynamic-security/v1/response")
            assert not door.may_publish("$CONTROL/dynamic-security/v1", b'{"commands":[]}')
        finally:
            door.close()
        # pinned to its own client id, as broker-config pins it
        thief = _Door(broker, shown["user"], shown["password"], "dangol-cloud-listener")
        thief.close()
        assert not thief.accepted, "the new door's login connected under another client id"
        wrong = _Door(broker, shown["user"], "not-the-password", proto.device_client_id(device.id))
        wrong.close()
        assert not wrong.accepted
        # and the page says so: no restart of the broker (which would drop every door of the chain)
        state = re.search(r'id="password-state">(.*?)</p>', page, re.S).group(1)
        assert "took this login at once" in state, state
        assert "systemctl restart mosquitto" not in _broker_steps(page) and not RELOAD.search(page)
    finally:
        broker.stop()


def test_the_live_login_has_exactly_the_rights_broker_config_writes(db, db_url, tmp_path, monkeypatch):
    """The role and client the broker holds after "Add device" are those of a ``broker-config`` run afterwards;
    and after that run and a restart, the door still logs in with the password it was shown."""
    from dangol_cloud.broker_auth import _answers

    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    try:
        _, shown = _add_door(_owner(app), chain.store_a)
        role = f"device-{shown['device']}"
        got_role, got_client = _answers(broker.url_as("cloud", CLOUD_PW),
                                        [{"command": "getRole", "rolename": role},
                                         {"command": "getClient", "username": shown["user"]}],
                                        client_id=f"test-{uuid.uuid4().hex[:6]}", timeout=5)
        assert "error" not in got_role and "error" not in got_client, (got_role, got_client)
        assert cli(["broker-config", "--out", str(tmp_path / "again")]) == 0
        written = json.loads((tmp_path / "again" / "dynamic-security.json").read_text())
        want_role = next(r for r in written["roles"] if r["rolename"] == role)
        want_client = next(c for c in written["clients"] if c["username"] == shown["user"])

        def acls(r):
            return sorted((a["acltype"], a["topic"], a["priority"], a["allow"]) for a in r["acls"])

        live_role, live_client = got_role["data"]["role"], got_client["data"]["client"]
        assert acls(live_role) == acls(want_role) and acls(live_role), live_role
        for key in ("username", "clientid", "textname"):
            assert live_client.get(key) == want_client.get(key), key
        assert [r["rolename"] for r in live_client["roles"]] == [r["rolename"] for r in want_client["roles"]]

        port = broker.port
        broker.stop()
        broker = DynsecBroker(tmp_path / "mosquitto-2", tmp_path / "again").start(port=port)
        door = _Door(broker, shown["user"], shown["password"], proto.device_client_id(shown["device"]))
        door.close()
        assert door.accepted, door.rc
    finally:
        broker.stop()


@pytest.mark.parametrize("case", ["older-broker-config", "broker-down"])
def test_when_the_broker_cannot_be_told_the_device_is_created_and_the_page_says_restart(sqlite_url, tmp_path,
                                                                                       monkeypatch, case):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    chain, app, broker = _broker_site(db, sqlite_url, tmp_path, monkeypatch, strip_admin=True,
                                      broker=case == "older-broker-config")
    try:
        page, shown = _add_door(_owner(app), chain.store_a)
        with db.sessions() as s:
            assert s.get(Device, shown["device"]).mqtt_username == shown["user"]
        state = re.search(r'id="password-state">(.*?)</p>', page, re.S).group(1)
        assert "could not be told" in state and "took this login at once" not in state, state
        steps = _broker_steps(page)
        assert "dangol-cloud)\" broker-config" in steps and "systemctl restart mosquitto" in steps
        assert not RELOAD.search(page)
        if broker is not None:  # the page told the truth: until the restart, the door cannot log in
            door = _Door(broker, shown["user"], shown["password"], proto.device_client_id(shown["device"]))
            door.close()
            assert not door.accepted
            saved = json.loads((broker.config_dir / "dynamic-security.json").read_text())
            assert f"device-{shown['device']}" not in {r["rolename"] for r in saved["roles"]}
    finally:
        if broker is not None:
            broker.stop()
        db.dispose()



def test_a_login_the_broker_refuses_leaves_no_role_behind(db, db_url, tmp_path, monkeypatch):
    """The broker already has the username (another device's): it refuses the client, and the role it took for the
    new device is deleted again; the error names the username and the broker's reason."""
    from dangol_cloud.broker_auth import BrokerLoginError, _answers, create_device_login

    chain, _, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    try:
        clash = Device(id=str(uuid.uuid4()), store_id=chain.store_a, name="Clash", mqtt_username=chain.user_b)
        url = broker.url_as("cloud", CLOUD_PW)
        with pytest.raises(BrokerLoginError, match=rf"{chain.user_b}.*createClient: Client already exists"):
            create_device_login(url, clash, "pw", client_id="test-create")
        (role,) = _answers(url, [{"command": "getRole", "rolename": f"device-{clash.id}"}], client_id="test-get",
                           timeout=5)
        assert role.get("error") == "Role not found", role
        still = _Door(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_b))
        still.close()
        assert still.accepted, "the other device's login was touched"
    finally:
        broker.stop()
