"""Login changes made on the running broker survive a Mosquitto restart, and a lost one is caught by the cloud.

The broker runs as ``nobody`` (as the packaged one runs as ``mosquitto``), its configuration folder read-only to it
(root 0755, files 0644: the README's ``/etc/mosquitto/dangol``). Found by review: with the dynamic-security file in
that folder the plugin could not save ("Error saving Dynamic security plugin config"), so after a restart a removed
device's login worked again and a replaced password reverted to the old one."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud import broker_auth as ba
from dangol_cloud.broker_logins import REMOVED_ACTION, STALE_ACTION, reconcile_device_logins, stale_logins
from dangol_cloud.erasure import audit
from dangol_cloud.events import Listener
from dangol_cloud.models import AuditEntry, Device
from dangol_cloud.security import mosquitto_hash
from tests.broker import MosquittoBroker

from .conftest import add_store_and_device

CLOUD_PW = "cloud-restart-pw"
UNPRIVILEGED = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running Mosquitto as another user needs root")


@pytest.fixture
def base():
    """A folder every user may enter (pytest's tmp_path is root-only 0700, closed to ``nobody``)."""
    path = Path(tempfile.mkdtemp(prefix="dangol-restart-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _install(db, base: Path, *, state_in_etc: bool) -> Path:
    """Configure the broker as the README says: the plugin lines in ``etc/`` (root, read-only to Mosquitto) and
    ``dynamic-security.json`` in ``state/`` (owned by Mosquitto's user, 0700) — or, ``state_in_etc``, as the README
    said before: the JSON in ``etc/`` too. Returns the plugin's ``dangol-dynsec.conf``."""
    etc, state = base / "etc", base / "state"
    etc.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    shutil.chown(state, UNPRIVILEGED)
    with db.sessions() as session:
        config = ba.dynsec_config(session, cloud_user="cloud", cloud_password=CLOUD_PW)
    json_path = (etc if state_in_etc else state) / "dynamic-security.json"
    ba.seed_dynsec_file(json_path, config)
    json_path.chmod(0o644 if state_in_etc else 0o600)  # the old README: root-owned, readable by the group
    conf = etc / "dangol-dynsec.conf"
    conf.write_text(ba.plugin_conf(json_path, ba.find_dynsec_plugin()))
    conf.chmod(0o644)
    return conf


def _broker(base: Path, conf: Path) -> MosquittoBroker:
    var = base / "var"
    var.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(var, UNPRIVILEGED)
    return MosquittoBroker(var, config_file=conf, persistence=True, user=UNPRIVILEGED)


def _login(broker: MosquittoBroker, username: str, password: str, device_id: str) -> str:
    """The CONNACK reason of a device login (MQTT 5, its own client id): ``Success`` or the refusal's name."""
    got: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device_id),
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, rc, p: (got.append(str(rc)), done.set())
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert done.wait(10), f"no CONNACK for {username}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def _restart(broker: MosquittoBroker) -> None:
    port = broker.port
    broker.stop()
    broker.start(port=port)


def _cloud(broker: MosquittoBroker) -> str:
    return f"mqtt://cloud:{CLOUD_PW}@{broker.host}:{broker.port}"


def _new_password(db, device_id: str, password: str) -> tuple[str, str]:
    """What the Stores page's New password does to the database; returns (username, new stored hash)."""
    with db.transaction() as s:
        device = s.get(Device, device_id)
        device.mqtt_password_hash = mosquitto_hash(password)
        return device.mqtt_username, device.mqtt_password_hash


def _second_device(db, store_id: str) -> tuple[str, str]:
    with db.transaction() as s:
        device = Device(store_id=store_id, name="Back door", mqtt_username="device-back-door",
                        mqtt_password_hash=mosquitto_hash("back-pw"))
        s.add(device)
        s.flush()
        return device.id, device.mqtt_username


def test_removal_and_new_password_outlast_a_broker_restart(db, base):
    store_id, kept = add_store_and_device(db, device_password="old-pw")
    removed, removed_user = _second_device(db, store_id)
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        user, stored = _new_password(db, kept, "new-pw")
        ba.replace_device_password(_cloud(broker), user, "new-pw", client_id="cloud-logins-t1", device_id=kept,
                                   stored_hash=stored)
        with db.transaction() as s:
            s.delete(s.get(Device, removed))
        ba.revoke_device_login(_cloud(broker), removed, removed_user, client_id="cloud-logins-t2")
        assert _login(broker, user, "old-pw", kept) == "Not authorized"
        _restart(broker)  # reboot, apt upgrade, crash
        assert _login(broker, user, "old-pw", kept) == "Not authorized", "the replaced password works again"
        assert _login(broker, user, "new-pw", kept) == "Success", "the new password is refused after a restart"
        assert _login(broker, removed_user, "back-pw", removed) == "Not authorized", "a removed device logs in"
        log = broker.log_file.read_text()
        assert "Error saving Dynamic security plugin config" not in log
        assert (base / "state" / "dynamic-security.json").stat().st_uid == pwd.getpwnam(UNPRIVILEGED).pw_uid
    finally:
        broker.stop()


def test_the_cloud_disables_an_old_password_and_deletes_a_removed_login_the_broker_brought_back(db, base):
    """Defence in depth: a broker that still cannot save (the old install) brings old logins back at its restart; the
    listener's reconciliation on (re)connecting deletes the removed device's login, disables the one with the old
    password and warns the owner until a new password is given."""
    store_id, kept = add_store_and_device(db, device_password="old-pw")
    removed, removed_user = _second_device(db, store_id)
    broker = _broker(base, _install(db, base, state_in_etc=True)).start()
    listener = None
    try:
        user, stored = _new_password(db, kept, "new-pw")
        ba.replace_device_password(_cloud(broker), user, "new-pw", client_id="cloud-logins-t1", device_id=kept,
                                   stored_hash=stored)
        with db.transaction() as s:  # what the Stores page's Remove does: recorded, then the row deleted
            audit(s, "owner@example.com", REMOVED_ACTION, device_id=removed)
            s.delete(s.get(Device, removed))
        ba.revoke_device_login(_cloud(broker), removed, removed_user, client_id="cloud-logins-t2")
        _restart(broker)
        assert "Error saving Dynamic security plugin config" in broker.log_file.read_text()  # the lost changes
        assert _login(broker, user, "old-pw", kept) == "Success"  # what the cloud is there to catch

        listener = Listener(db, _cloud(broker), client_id="cloud-restart-listener").start()
        assert listener.logins.done.wait(15), "the listener did not check the broker's logins"
        assert listener.logins.failures == 0
        assert listener.logins.totals == {"checked": 2, "deleted": 1, "unknown": 0, "disabled": 1,
                                          "still_disabled": 0, "enabled": 0, "unmarked": 0}
        assert _login(broker, user, "old-pw", kept) == "Not authorized", "the old password still works"
        assert _login(broker, removed_user, "back-pw", removed) == "Not authorized", "the removed device logs in"
        with db.sessions() as s:
            devices = s.scalars(select(Device)).all()
            assert stale_logins(s, devices) == {kept}  # the Stores page warns the owner
            entry = s.scalar(select(AuditEntry).where(AuditEntry.action == STALE_ACTION))
            assert entry.device_id == kept and entry.actor == "broker"

        # a second check finds the login already disabled: nothing new to do, no second warning
        again = reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t3")
        assert again == {"checked": 1, "deleted": 0, "unknown": 0, "disabled": 0, "still_disabled": 1, "enabled": 0,
                         "unmarked": 0}

        # the owner gives the box a new password: the login works again with it, and the warning goes
        user, stored = _new_password(db, kept, "newer-pw")
        ba.replace_device_password(_cloud(broker), user, "newer-pw", client_id="cloud-logins-t4", device_id=kept,
                                   stored_hash=stored)
        assert _login(broker, user, "newer-pw", kept) == "Success"
        assert _login(broker, user, "old-pw", kept) == "Not authorized"
        with db.sessions() as s:
            assert stale_logins(s, s.scalars(select(Device)).all()) == set()
        assert reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t5")["disabled"] == 0
    finally:
        if listener is not None:
            listener.stop()
        broker.stop()


def test_a_login_without_a_password_mark_is_counted_not_disabled(db, base):
    """A file from a broker-config before password marks: its logins cannot be checked; they are counted and logged
    (run broker-config again), never locked out."""
    store_id, kept = add_store_and_device(db, device_password="pw")
    conf = _install(db, base, state_in_etc=False)
    path = base / "state" / "dynamic-security.json"
    config = json.loads(path.read_text())
    for client in config["clients"]:
        client.pop("textdescription", None)
    ba.seed_dynsec_file(path, config)
    broker = _broker(base, conf).start()
    try:
        with db.sessions() as s:
            user = s.get(Device, kept).mqtt_username
        counts = reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t6")
        assert counts == {"checked": 1, "deleted": 0, "unknown": 0, "disabled": 0, "still_disabled": 0, "enabled": 0,
                          "unmarked": 1}
        assert _login(broker, user, "pw", kept) == "Success"
    finally:
        broker.stop()


def test_the_stores_page_warns_of_a_disabled_login_until_a_new_password(sqlite_url, tmp_path, base):
    """Through the Stores page: New password, the broker loses it at a restart (the old install), the cloud disables
    the login and the page says so; the owner's next New password works and the warning goes."""
    import re

    from dangol_cloud.app import create_app
    from dangol_cloud.db import Database
    from dangol_cloud.settings import Settings

    from .conftest import DEV_KEY_BYTES, add_owner
    from .test_cloud_web import csrf_of, sign_in

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    _store_id, device_id = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=True)).start()
    try:
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                            mqtt_url=_cloud(broker), _env_file=None)
        owner = create_app(settings, db=db, TESTING=True).test_client()
        sign_in(owner)
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))

        def new_password() -> str:
            page = owner.post(f"/stores/devices/{device_id}/password", data={"csrf_token": token, "confirm": "yes"})
            html = page.get_data(as_text=True)
            assert "the old one no longer works" in html
            return re.search(r'id="mqtt-password">([^<]+)<', html).group(1)

        first = new_password()
        with db.sessions() as s:
            user = s.get(Device, device_id).mqtt_username
        assert "broker-login-stale" not in owner.get("/stores/").get_data(as_text=True)
        _restart(broker)  # the save failed: the old password is back, the page's one refused
        assert _login(broker, user, "old-pw", device_id) == "Success"
        assert _login(broker, user, first, device_id) == "Not authorized"
        assert reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t7")["disabled"] == 1
        assert _login(broker, user, "old-pw", device_id) == "Not authorized"
        assert "Login disabled" in owner.get("/stores/").get_data(as_text=True)

        second = new_password()
        assert "Login disabled" not in owner.get("/stores/").get_data(as_text=True)
        assert _login(broker, user, second, device_id) == "Success"
    finally:
        broker.stop()
        db.dispose()


def test_an_empty_database_never_wipes_the_brokers_logins(db, base, caplog):
    """A cloud started on a wrong (empty) database must not delete every store's logins: a device it never recorded
    (nor its removal) is ``unknown``, left alone, logged (a wrong database with devices of its own:
    test_broker_logins_review_dec7.py)."""
    store_id, kept = add_store_and_device(db, device_password="pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        with db.transaction() as s:
            user = s.get(Device, kept).mqtt_username
            s.delete(s.get(Device, kept))
        counts = reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t8")
        assert counts == {"checked": 1, "deleted": 0, "unknown": 1, "disabled": 0, "still_disabled": 0, "enabled": 0,
                          "unmarked": 0}
        assert "1 device logins on the broker belong to devices this database never recorded" in caplog.text
        assert _login(broker, user, "pw", kept) == "Success"
    finally:
        broker.stop()


def test_broker_config_and_a_restart_end_the_warning(db, base):
    """After the owner's fix by hand (broker-config, restart) a later check finds the login back in line: the Stores
    page's warning ends without another new password."""
    _store_id, kept = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=True)).start()
    try:
        user, stored = _new_password(db, kept, "new-pw")
        ba.replace_device_password(_cloud(broker), user, "new-pw", client_id="cloud-logins-t9", device_id=kept,
                                   stored_hash=stored)
        _restart(broker)
        assert reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t10")["disabled"] == 1
        with db.sessions() as s:
            assert stale_logins(s, s.scalars(select(Device)).all()) == {kept}
        path = base / "etc" / "dynamic-security.json"  # broker-config, as root, and a restart
        with db.sessions() as s:
            ba.seed_dynsec_file(path, ba.dynsec_config(s, cloud_user="cloud", cloud_password=CLOUD_PW))
        path.chmod(0o644)
        _restart(broker)
        assert reconcile_device_logins(db, _cloud(broker), client_id="cloud-logins-t11")["disabled"] == 0
        assert _login(broker, user, "new-pw", kept) == "Success"
        with db.sessions() as s:
            assert stale_logins(s, s.scalars(select(Device)).all()) == set()
    finally:
        broker.stop()
