"""Bring the broker's device logins back in line with the database whenever the cloud (re)connects to it.

Mosquitto's dynamic-security plugin keeps its logins in a file it rewrites on every change; a change it could not
save (its folder not writable by the ``mosquitto`` user: ``Error saving Dynamic security plugin config``) is lost
at the next restart, when the old file comes back: a removed (stolen) box could log in again, and a replaced
password would revert to the old one. :func:`reconcile_device_logins` asks the plugin for its clients and:

* deletes the login (and role) of a device this database records as *removed* (the Stores page's Remove writes an
  audit entry :data:`REMOVED_ACTION` naming it), and the login of a known device under a username not the device's;
* never touches the login of a device the database never knew (``unknown``, one warning a run naming how many): a
  cloud started on a wrong database (staging, a restored backup) must not delete other boxes' logins, which cannot
  be recovered (their hashes are gone);
* disables the login of a device whose password is not the database's current one: its ``textdescription`` holds
  the :func:`~dangol_cloud.broker_auth.password_mark` of the password it was given (``broker-config``, Add device,
  New password) and that differs from the mark of the stored hash (read again just before deciding). The owner is
  warned on the Stores page by an audit entry ``broker-login-stale`` naming the database's mark, written *before*
  the disable is sent (and for a login found disabled without a current warning); a new password clears it, and so
  does a later check finding the login enabled with the database's password (``broker-login-fixed``, e.g. after
  ``broker-config`` and a restart). The owner gives the box a new password, which enables the login again
  (:func:`~dangol_cloud.broker_auth.replace_device_password`);
* enables again a login that is disabled although its mark is the database's, when the device's newest entry of
  the two is the cloud's own ``broker-login-stale``: a New password landed between the listing and the disable
  (checked again in the same run after a disable, and on every run); ``broker-login-fixed`` is written;
* counts a device login without a mark (a file from a ``broker-config`` before marks) as ``unmarked``, logged: its
  password cannot be checked until ``broker-config`` is run again.

:class:`dangol_cloud.events.Listener` runs it on every connection (a :class:`LoginReconciler`, off paho's network
thread).
"""

from __future__ import annotations

import logging
import re
import threading

from sqlalchemy import select

from dangol_cloud.broker_auth import MARK_PREFIX, BrokerLoginError, _answers, password_mark
from dangol_cloud.db import Database
from dangol_cloud.erasure import audit
from dangol_cloud.models import AuditEntry, Device

__all__ = ["FIXED_ACTION", "REMOVED_ACTION", "STALE_ACTION", "LoginReconciler", "reconcile_device_logins",
           "stale_logins"]

log = logging.getLogger(__name__)

STALE_ACTION = "broker-login-stale"
"""Audit action: the broker had a device login with an older password and the cloud disabled it (or is about to:
written before the disable is sent); ``detail`` is ``db <mark>``, the database's
:func:`~dangol_cloud.broker_auth.password_mark` at the time."""
FIXED_ACTION = "broker-login-fixed"
"""Audit action: a login of :data:`STALE_ACTION` is back in line (enabled, with the database's password: e.g. after
``broker-config`` and a restart, or enabled again by the cloud after a New password raced its disable), found by a
later check."""
REMOVED_ACTION = "device-removed"
"""Audit action (actor: the owner's e-mail): a device was removed on the Stores page; ``device_id`` names it (the
column has no foreign key, so it outlives the device's row). Only such a device's broker login is deleted."""
_DEVICE_ROLE = re.compile(r"^device-([0-9a-fA-F-]{36})$")
_DONE = {"deleteClient": "Client not found", "deleteRole": "Role not found", "disableClient": "Client not found"}
"""The plugin's error that means the command's work is already done (e.g. the Stores page or another cloud process
deleted that login meanwhile), as :func:`~dangol_cloud.broker_auth.revoke_device_login` counts them."""
_CHUNK = 500  # ids per IN (...) of one query


def _device_of(client: dict) -> str | None:
    """The device id of a dynamic-security client whose role is ``device-<id>``, else None (the cloud's login)."""
    for role in client.get("roles") or ():
        found = _DEVICE_ROLE.match(str(role.get("rolename", "")))
        if found:
            return found.group(1)
    return None


def _list_clients(mqtt_url: str, client_id: str, timeout: float) -> list[dict]:
    (listed,) = _answers(mqtt_url, [{"command": "listClients", "verbose": True, "count": -1, "offset": 0}],
                         client_id=client_id, timeout=timeout)
    if listed.get("error"):
        raise BrokerLoginError(f"the broker refused listClients: {listed['error']}")
    return (listed.get("data") or {}).get("clients") or []


def _mark_of(client: dict) -> str | None:
    text = str(client.get("textdescription") or "")
    return text[len(MARK_PREFIX):] if text.startswith(MARK_PREFIX) else None


def _newest(session, ids) -> dict[str, tuple[str, str]]:
    """Device id → (action, detail) of its newest :data:`STALE_ACTION` / :data:`FIXED_ACTION` entry."""
    ids, newest = list(ids), {}
    for start in range(0, len(ids), _CHUNK):
        rows = session.execute(select(AuditEntry.device_id, AuditEntry.action, AuditEntry.detail)
                               .where(AuditEntry.action.in_((STALE_ACTION, FIXED_ACTION)),
                                      AuditEntry.device_id.in_(ids[start:start + _CHUNK]))
                               .order_by(AuditEntry.id))
        newest.update({device_id: (action, detail) for device_id, action, detail in rows})
    return newest


def _removed(session, ids) -> set[str]:
    """Those of ``ids`` this database recorded as removed (:data:`REMOVED_ACTION`)."""
    ids, found = list(ids), set()
    for start in range(0, len(ids), _CHUNK):
        found.update(session.scalars(select(AuditEntry.device_id).where(
            AuditEntry.action == REMOVED_ACTION, AuditEntry.device_id.in_(ids[start:start + _CHUNK]))))
    return found


def _current_marks(db: Database, ids) -> dict[str, str]:
    """Device id → mark of its stored hash, read now (a device removed meanwhile is missing)."""
    wanted = set(ids)
    with db.sessions() as session:
        return {d.id: password_mark(d.mqtt_password_hash) for d in session.scalars(select(Device)) if d.id in wanted}


def _warn(db: Database, ids, marks: dict[str, str]) -> None:
    """Write :data:`STALE_ACTION` for each of ``ids`` that has no current one (naming ``marks[id]``), committed."""
    with db.transaction() as session:
        newest = _newest(session, ids)
        for device_id in ids:
            if newest.get(device_id) != (STALE_ACTION, f"db {marks[device_id]}"):
                audit(session, "broker", STALE_ACTION, device_id=device_id, detail=f"db {marks[device_id]}")


def _send(mqtt_url: str, commands: list[dict], *, client_id: str, timeout: float) -> tuple[list[dict], list[str]]:
    """Send ``commands``; returns their answers and the refusals (``command name: error``), :data:`_DONE` not."""
    if not commands:
        return [], []
    answers = _answers(mqtt_url, commands, client_id=client_id, timeout=timeout)
    refused = [f"{c['command']} {c.get('username') or c.get('rolename')}: {a['error']}"
               for c, a in zip(commands, answers) if a.get("error") not in (None, _DONE.get(c["command"]))]
    return answers, refused


def reconcile_device_logins(db: Database, mqtt_url: str, *, client_id: str, timeout: float = 5.0) -> dict[str, int]:
    """Make the running broker's device logins agree with the ``devices`` table (see the module docstring).

    Args:
        db: the cloud's database (read; audit entries :data:`STALE_ACTION` / :data:`FIXED_ACTION` written).
        mqtt_url: the cloud's broker URL (its login has the role :data:`~dangol_cloud.broker_auth.LOGINS_ROLE`).
        client_id: MQTT client id for this one connection (the cloud's login may use any).
        timeout: seconds for each exchange with the plugin.

    Returns:
        Counts: ``checked`` (device logins on the broker), ``deleted`` (device recorded removed, or another
        username), ``unknown`` (a device this database never recorded: left alone), ``disabled`` (old password,
        disabled now), ``still_disabled`` (old password, disabled before), ``enabled`` (disabled by the cloud,
        though it has the database's password: enabled again), ``unmarked`` (no password mark).

    Raises:
        BrokerLoginError: the broker could not be asked or refused (no plugin, or a config without the logins role);
            warnings for logins being disabled are written before the disables are sent.
    """
    clients = _list_clients(mqtt_url, client_id, timeout)
    listed = {d for d in map(_device_of, clients) if d is not None}
    with db.sessions() as session:
        devices = {d.id: (d.mqtt_username, password_mark(d.mqtt_password_hash))
                   for d in session.scalars(select(Device))}
        removed = _removed(session, listed - set(devices))
        newest = _newest(session, devices)
    counts = dict.fromkeys(("checked", "deleted", "unknown", "disabled", "still_disabled", "enabled", "unmarked"), 0)
    commands: list[dict] = []
    to_disable: dict[str, tuple[str, str]] = {}  # device id -> (username, the broker's mark)
    to_warn: list[str] = []  # disabled for an old password, no current warning
    to_enable: list[str] = []
    fine: list[str] = []  # enabled with the database's password: a warning about them is over
    for client in clients:
        device_id = _device_of(client)
        if device_id is None:
            continue
        counts["checked"] += 1
        username, known = client.get("username"), devices.get(device_id)
        if known is None and device_id not in removed:
            counts["unknown"] += 1
            continue
        if known is None or known[0] != username:
            log.warning("broker login %s of %s device %s deleted", username,
                        "removed" if known is None else "another username for", device_id)
            commands.append({"command": "deleteClient", "username": username})
            if known is None:
                commands.append({"command": "deleteRole", "rolename": f"device-{device_id}"})
            counts["deleted"] += 1
            continue
        mark = _mark_of(client)
        if mark is None:
            counts["unmarked"] += 1
            log.warning("broker login %s has no password mark (a file from an older broker-config): its password "
                        "cannot be checked; run dangol-cloud broker-config and restart Mosquitto", username)
        elif mark == known[1] and not client.get("disabled"):
            fine.append(device_id)
        elif mark == known[1]:
            if (newest.get(device_id) or ("",))[0] == STALE_ACTION:  # our disable raced a New password
                to_enable.append(device_id)
            else:
                log.warning("broker login %s is disabled though its password is the database's, not by the cloud: "
                            "left alone", username)
        elif client.get("disabled"):
            counts["still_disabled"] += 1
            if newest.get(device_id) != (STALE_ACTION, f"db {known[1]}"):
                to_warn.append(device_id)
        else:
            to_disable[device_id] = (username, mark)
    marks = _current_marks(db, [*to_disable, *to_warn]) if to_disable or to_warn else {}
    to_disable = {d: um for d, um in to_disable.items() if d in marks and marks[d] != um[1]}
    to_warn = [d for d in to_warn if d in marks]
    if to_disable or to_warn:
        _warn(db, [*to_disable, *to_warn], marks)  # before the disables: a failed run still leaves the warning
    for device_id, (username, _) in to_disable.items():
        log.warning("broker login %s of device %s has an older password than the database's: disabled (give the box "
                    "a new password on the Stores page)", username, device_id)
        commands.append({"command": "disableClient", "username": username})
    counts["disabled"] = len(to_disable)
    enables = [{"command": "enableClient", "username": devices[d][0]} for d in to_enable]
    answers, refused = _send(mqtt_url, commands + enables, client_id=client_id, timeout=timeout)
    enabled = {d: devices[d][1] for d, answer in zip(to_enable, answers[len(commands):]) if not answer.get("error")}
    if to_disable:  # a New password that landed between our listing and our disable: its login is enabled again
        marks = _current_marks(db, to_disable)
        raced = [(_device_of(c), c.get("username")) for c in _list_clients(mqtt_url, client_id, timeout)
                 if _device_of(c) in to_disable and c.get("disabled") and _mark_of(c) == marks.get(_device_of(c))]
        answers, more = _send(mqtt_url, [{"command": "enableClient", "username": u} for _, u in raced],
                              client_id=client_id, timeout=timeout)
        refused += more
        enabled.update({d: marks[d] for (d, _), answer in zip(raced, answers) if not answer.get("error")})
    counts["enabled"] = len(enabled)
    with db.transaction() as session:
        for device_id, mark in enabled.items():
            log.warning("broker login of device %s was disabled by the cloud though it has the database's password "
                        "(a New password given meanwhile): enabled again", device_id)
            audit(session, "broker", FIXED_ACTION, device_id=device_id, detail=f"db {mark}")
        for device_id in stale_logins(session, [session.get(Device, d) for d in fine] if fine else []):
            audit(session, "broker", FIXED_ACTION, device_id=device_id, detail=f"db {devices[device_id][1]}")
    if counts["unknown"]:
        log.warning("%d device logins on the broker belong to devices this database never recorded (not in it, not "
                    "removed on its Stores page): left alone. Is DANGOL_DATABASE_URL the cloud's database? A box "
                    "removed before removals were recorded: broker-config and a Mosquitto restart drop its login",
                    counts["unknown"])
    if refused:
        raise BrokerLoginError(f"the broker refused to bring device logins in line: {'; '.join(refused)}")
    if counts["deleted"] or counts["disabled"] or counts["enabled"] or counts["unmarked"]:
        log.warning("broker device logins reconciled with the database: %s", counts)
    else:
        log.info("broker device logins agree with the database: %s", counts)
    return counts


def stale_logins(session, devices: list[Device | None]) -> set[str]:
    """Ids among ``devices`` whose broker login the cloud disabled for an old password, with no new password since
    (the :data:`STALE_ACTION` entry names the device's current mark) and not found back in line by a later check
    (no newer :data:`FIXED_ACTION`): the Stores page warns."""
    marks = {d.id: password_mark(d.mqtt_password_hash) for d in devices if d is not None}
    if not marks:
        return set()
    return {device_id for device_id, (action, detail) in _newest(session, marks).items()
            if action == STALE_ACTION and detail == f"db {marks[device_id]}"}


class LoginReconciler:
    """Runs :func:`reconcile_device_logins` on a thread of its own each time :meth:`start` is called (the listener's
    every connection), one run at a time (a call while one runs is skipped). No I/O until :meth:`start`.

    Attributes:
        totals: the sums of every run's counts (``checked``, ``deleted``, ``disabled`` ...).
        runs: runs that finished; ``failures``: runs that raised (logged: a broker without the plugin, or the
            database unreachable), tried again at the next connection.
    """

    def __init__(self, db: Database, mqtt_url: str, *, client_id: str, timeout: float = 5.0) -> None:
        self.db, self.mqtt_url, self.client_id, self.timeout = db, mqtt_url, client_id, timeout
        self.totals: dict[str, int] = {}
        self.runs = 0
        self.failures = 0
        self.done = threading.Event()  # set after each run (tests wait on it)
        self._running = threading.Lock()

    def start(self) -> bool:
        """Start a run in the background unless one is running; returns whether one was started."""
        if not self._running.acquire(blocking=False):
            return False
        self.done.clear()
        threading.Thread(target=self._run, name="dangol-broker-logins", daemon=True).start()
        return True

    def _run(self) -> None:
        try:
            counts = reconcile_device_logins(self.db, self.mqtt_url, client_id=self.client_id, timeout=self.timeout)
            for key, n in counts.items():
                self.totals[key] = self.totals.get(key, 0) + n
            self.runs += 1
        except Exception as exc:  # noqa: BLE001 - logged and counted; the next connection tries again
            self.failures += 1
            log.warning("broker device logins not checked against the database: %s: %s", type(exc).__name__, exc)
        finally:
            self._running.release()
            self.done.set()
