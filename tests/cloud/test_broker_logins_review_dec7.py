"""Review of the broker-login reconciler (7 Dec): a New password racing the check, a removal racing it, a cloud on
a wrong database, and what the pages say. Real Mosquitto run as ``nobody`` (fixtures of
``test_broker_restart_logins``); SQLite only (the reconciler's SQL is plain selects and inserts)."""

from __future__ import annotations

import logging
import os
import re

import pytest
from sqlalchemy import select

from dangol_cloud import broker_auth as ba
from dangol_cloud import broker_logins as bl
from dangol_cloud.db import Database
from dangol_cloud.erasure import audit
from dangol_cloud.models import AuditEntry, Device
from dangol_cloud.security import mosquitto_hash

from .conftest import DEV_KEY_BYTES, add_owner, add_store_and_device
from .test_broker_restart_logins import _broker, _cloud, _install, _login, _new_password, _restart, base  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running Mosquitto as another user needs root")
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _add_device(db, store_id: str, username: str, password: str) -> str:
    with db.transaction() as s:
        device = Device(store_id=store_id, name=username, mqtt_username=username,
                        mqtt_password_hash=mosquitto_hash(password))
        s.add(device)
        s.flush()
        return device.id


def _remove_recorded(db, device_id: str) -> None:
    """What the Stores page's Remove does to the database (the removal recorded, the row gone)."""
    with db.transaction() as s:
        audit(s, "owner@example.com", bl.REMOVED_ACTION, device_id=device_id)
        s.delete(s.get(Device, device_id))


def _warned(db) -> set[str]:
    with db.sessions() as s:
        return bl.stale_logins(s, s.scalars(select(Device)).all())


def _actions(db, device_id: str) -> list[str]:
    with db.sessions() as s:
        return list(s.scalars(select(AuditEntry.action).where(AuditEntry.device_id == device_id)
                              .order_by(AuditEntry.id)))


# --- 1. a New password given while the check runs ------------------------------------------------------------------
@SQLITE
def test_a_new_password_during_the_check_leaves_the_login_enabled(db, base, monkeypatch):
    """The page commits the new password, then sets it on the broker and enables the login; the check listed the
    broker before and read the database after, so its disable lands last. The same run finds the login disabled
    with the database's password and enables it again (broker-login-fixed)."""
    _store_id, dev = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        real, state = bl._answers, {}

        def answers(url, commands, **kw):
            out = real(url, commands, **kw)
            if commands[0]["command"] == "listClients" and not state:  # the owner's New password, right after
                state["user"], stored = _new_password(db, dev, "new-pw")
                ba.replace_device_password(_cloud(broker), state["user"], "new-pw", client_id="owner-page",
                                           device_id=dev, stored_hash=stored)
            return out

        monkeypatch.setattr(bl, "_answers", answers)
        counts = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-1")
        assert counts["disabled"] == 1 and counts["enabled"] == 1
        assert _login(broker, state["user"], "new-pw", dev) == "Success"
        assert _warned(db) == set()
        assert _actions(db, dev) == [bl.STALE_ACTION, bl.FIXED_ACTION]
        monkeypatch.setattr(bl, "_answers", real)
        again = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-2")
        assert again["disabled"] == again["enabled"] == again["still_disabled"] == 0
        assert _login(broker, state["user"], "new-pw", dev) == "Success"
    finally:
        broker.stop()


@SQLITE
def test_a_login_left_disabled_with_the_databases_password_is_enabled_by_the_next_check(db, base):
    """What a racing run of the old code left: disabled, the database's mark, the cloud's own warning the newest
    entry. The next check enables it and ends the warning; a login disabled by someone else (no warning of the
    cloud's) is left alone."""
    store_id, dev = add_store_and_device(db, device_password="pw")
    other = _add_device(db, store_id, "device-other", "other-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        with db.transaction() as s:
            user, mark = s.get(Device, dev).mqtt_username, ba.password_mark(s.get(Device, dev).mqtt_password_hash)
            audit(s, "broker", bl.STALE_ACTION, device_id=dev, detail=f"db {mark}")
        ba._answers(_cloud(broker), [{"command": "disableClient", "username": user},
                                     {"command": "disableClient", "username": "device-other"}], client_id="admin",
                    timeout=5)
        assert _login(broker, user, "pw", dev) == "Not authorized"
        counts = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec")
        assert counts["enabled"] == 1 and counts["disabled"] == 0
        assert _login(broker, user, "pw", dev) == "Success"
        assert _login(broker, "device-other", "other-pw", other) == "Not authorized"
        assert _warned(db) == set()
        assert _actions(db, dev)[-1] == bl.FIXED_ACTION
    finally:
        broker.stop()


# --- 2. a disabled login always ends with a warning ----------------------------------------------------------------
@SQLITE
def test_a_removal_during_the_check_neither_fails_it_nor_loses_the_warning(db, base, monkeypatch):
    """The owner removes a box while the check runs: its deleteClient is answered "Client not found", which is
    done, not a failure; the other box's disabled login is on the Stores page."""
    store_id, kept = add_store_and_device(db, device_password="old-pw")
    removed = _add_device(db, store_id, "device-back", "b")
    broker = _broker(base, _install(db, base, state_in_etc=True)).start()  # the old install: changes lost
    try:
        user, stored = _new_password(db, kept, "new-pw")
        ba.replace_device_password(_cloud(broker), user, "new-pw", client_id="t1", device_id=kept, stored_hash=stored)
        _remove_recorded(db, removed)  # removed on the page, but the broker brought the login back at its restart
        _restart(broker)
        real = bl._answers

        def answers(url, commands, **kw):
            out = real(url, commands, **kw)
            if commands[0]["command"] == "listClients":  # a second cloud process deletes it meanwhile
                ba.revoke_device_login(_cloud(broker), removed, "device-back", client_id="other-process")
            return out

        monkeypatch.setattr(bl, "_answers", answers)
        counts = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-1")
        assert counts["deleted"] == 1 and counts["disabled"] == 1
        assert _login(broker, user, "old-pw", kept) == "Not authorized"
        assert _warned(db) == {kept}
    finally:
        broker.stop()


@SQLITE
def test_the_warning_is_written_before_the_login_is_disabled(db, base, monkeypatch):
    """The broker takes the disable but the answer never comes (the check raises): the owner is warned anyway."""
    _store_id, kept = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        _new_password(db, kept, "new-pw")  # the broker was not told: it has the old password
        real = bl._answers

        def answers(url, commands, **kw):
            out = real(url, commands, **kw)
            if commands[0]["command"] != "listClients":
                raise ba.BrokerLoginError("no answer from the broker's dynamic-security plugin within 5 s")
            return out

        monkeypatch.setattr(bl, "_answers", answers)
        with pytest.raises(ba.BrokerLoginError):
            bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-1")
        assert _warned(db) == {kept}
    finally:
        broker.stop()


@SQLITE
def test_a_disabled_login_without_a_warning_gets_one(db, base):
    """A login disabled for an old password whose warning was never written (a run that failed before): the next
    check counts it still disabled and writes the warning, once."""
    _store_id, kept = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        user, _ = _new_password(db, kept, "new-pw")
        ba._answers(_cloud(broker), [{"command": "disableClient", "username": user}], client_id="admin", timeout=5)
        assert _warned(db) == set()
        assert bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-1")["still_disabled"] == 1
        assert _warned(db) == {kept}
        bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-2")
        assert _actions(db, kept) == [bl.STALE_ACTION]
    finally:
        broker.stop()


# --- 3. a wrong database deletes nothing it never knew -------------------------------------------------------------
@SQLITE
def test_a_cloud_on_a_wrong_database_leaves_every_store_login_alone(db, base, tmp_path, caplog):
    """A staging database with a box of its own, pointed at the production broker: the production logins are
    devices it never recorded: counted ``unknown``, one warning, none deleted."""
    store_id, first = add_store_and_device(db, device_password="pw0")
    boxes = [(first, None, "pw0")] + [(_add_device(db, store_id, f"device-p{k}", f"pw{k}"), f"device-p{k}", f"pw{k}")
                                      for k in (1, 2)]
    with db.sessions() as s:
        boxes[0] = (first, s.get(Device, first).mqtt_username, "pw0")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    staging = Database(f"sqlite:///{tmp_path}/staging.db", data_key=DEV_KEY_BYTES)
    try:
        staging.migrate()
        add_store_and_device(staging, device_password="test")
        caplog.set_level(logging.WARNING, logger="dangol_cloud.broker_logins")
        counts = bl.reconcile_device_logins(staging, _cloud(broker), client_id="staging-rec")
        assert counts["unknown"] == 3 and counts["deleted"] == 0
        assert [_login(broker, user, pw, d) for d, user, pw in boxes] == ["Success"] * 3
        warnings = [r.getMessage() for r in caplog.records if "never recorded" in r.getMessage()]
        assert len(warnings) == 1 and "3 device logins" in warnings[0]
    finally:
        staging.dispose()
        broker.stop()


@SQLITE
def test_a_restored_backup_keeps_the_login_of_a_box_added_since(db, base):
    """A box added after the backup was taken is not in the restored database, nor recorded as removed: its login
    stays."""
    store_id, _old = add_store_and_device(db, device_password="a-pw")
    new = _add_device(db, store_id, "device-new-door", "b-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        with db.transaction() as s:  # restored: the new door's row is not there
            s.delete(s.get(Device, new))
        counts = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec-b")
        assert counts["unknown"] == 1 and counts["deleted"] == 0
        assert _login(broker, "device-new-door", "b-pw", new) == "Success"
    finally:
        broker.stop()


def test_the_stores_page_records_a_removal_and_the_check_deletes_a_login_the_broker_brought_back(sqlite_url,
                                                                                               tmp_path, base):
    """Remove on the Stores page writes ``device-removed`` naming the device; after the old install's restart brings
    the login back, the check deletes it (the database recorded that removal)."""
    from dangol_cloud.app import create_app
    from dangol_cloud.settings import Settings

    from .test_cloud_web import csrf_of, sign_in

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, kept = add_store_and_device(db, device_password="pw")
    removed = _add_device(db, store_id, "device-back", "back-pw")
    broker = _broker(base, _install(db, base, state_in_etc=True)).start()
    try:
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                            mqtt_url=_cloud(broker), _env_file=None)
        owner = create_app(settings, db=db, TESTING=True).test_client()
        sign_in(owner)
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))
        owner.post(f"/stores/devices/{removed}/delete", data={"csrf_token": token, "confirm": "yes"})
        with db.sessions() as s:
            assert s.get(Device, removed) is None
            entry = s.scalar(select(AuditEntry).where(AuditEntry.action == bl.REMOVED_ACTION))
            assert entry.device_id == removed and entry.actor
        assert _login(broker, "device-back", "back-pw", removed) == "Not authorized"
        _restart(broker)  # the broker could not save the revoke: the login is back
        assert _login(broker, "device-back", "back-pw", removed) == "Success"
        counts = bl.reconcile_device_logins(db, _cloud(broker), client_id="rec")
        assert counts["deleted"] == 1 and counts["unknown"] == 0
        assert _login(broker, "device-back", "back-pw", removed) == "Not authorized"
        with db.sessions() as s:
            assert _login(broker, s.get(Device, kept).mqtt_username, "pw", kept) == "Success"
    finally:
        broker.stop()
        db.dispose()


# --- 4. what the page says after a New password the broker could not take ----------------------------------------
def test_the_page_after_a_new_password_the_broker_did_not_take_says_what_happens(sqlite_url, tmp_path, base):
    """The broker could not be told: the page must not promise the old password keeps working; the listener's next
    check disables it (the new one is not on the broker either) and the Stores page warns."""
    from dangol_cloud.app import create_app
    from dangol_cloud.settings import Settings

    from .test_cloud_web import csrf_of, sign_in

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    _store_id, dev = add_store_and_device(db, device_password="old-pw")
    broker = _broker(base, _install(db, base, state_in_etc=False)).start()
    try:
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                            mqtt_url=f"mqtt://cloud:wrong@{broker.host}:{broker.port}", _env_file=None)
        owner = create_app(settings, db=db, TESTING=True).test_client()
        sign_in(owner)
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))
        html = owner.post(f"/stores/devices/{dev}/password",
                          data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
        assert "keeps working until the broker's configuration is regenerated" not in text
        assert "keeps working until the cloud's next check of the broker's logins" in text
        assert "disables the old password's login" in text and "locked out" in text
        new = re.search(r'id="mqtt-password">([^<]+)<', html).group(1)
        with db.sessions() as s:
            user = s.get(Device, dev).mqtt_username
        assert bl.reconcile_device_logins(db, _cloud(broker), client_id="rec")["disabled"] == 1
        assert _login(broker, user, "old-pw", dev) == "Not authorized"
        assert _login(broker, user, new, dev) == "Not authorized"
        assert _warned(db) == {dev}
    finally:
        broker.stop()
        db.dispose()
