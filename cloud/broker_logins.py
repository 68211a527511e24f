"""Bring the broker's device logins back in line with the database whenever the cloud (re)connects to it.

Mosquitto's dynamic-security plugin keeps its logins in a file it rewrites on every change; a change it could not
save (its folder not writable by the ``mosquitto`` user: ``Error saving Dynamic security plugin config``) is lost
at the next restart, when the old file comes back: a removed (stolen) box could log in again, and a replaced
password would revert to the old one. :func:`reconcile_device_logins` asks the plugin for its clients and:

* deletes the login (and role) of a device the database does not have, or whose username is not the device's;
* disables the login of a device whose password is not the database's current one: its ``textdescription`` holds
  the :func:`~dangol_cloud.broker_auth.password_mark` of the password it was given (``broker-config``, Add device,
  New password) and that differs from the mark of the stored hash. The owner is warned on the Stores page (an audit
  entry ``broker-login-stale`` naming the database's mark; a new password clears it, and so does a later check
  finding the login enabled with the database's password, ``broker-login-fixed``, e.g. after ``broker-config`` and
  a restart) and gives the box a new password, which enables the login again
  (:func:`~dangol_cloud.broker_auth.replace_device_password`);
* deletes nothing while the database has no device at all but the broker has device logins (``held``, an error
  logged): a cloud started on a wrong or empty database must not wipe every store's logins;
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

__all__ = ["FIXED_ACTION", "STALE_ACTION", "LoginReconciler", "reconcile_device_logins", "stale_logins"]

log = logging.getLogger(__name__)

STALE_ACTION = "broker-login-stale"
"""Audit action: the broker had a device login with an older password and the cloud disabled it; ``detail`` is
``db <mark>``, the database's :func:`~dangol_cloud.broker_auth.password_mark` at the time."""
FIXED_ACTION = "broker-login-fixed"
"""Audit action: a login of :data:`STALE_ACTION` is back in line (enabled, with the database's password: e.g. after
``broker-config`` and a restart), found by a later check."""
_DEVICE_ROLE = re.compile(r"^device-([0-9a-fA-F-]{36})$")


def _device_of(client: dict) -> str | None:
    """The device id of a dynamic-security client whose role is ``device-<id>``, else None (the cloud's login)."""
    for role in client.get("roles") or ():
        found = _DEVICE_ROLE.match(str(role.get("rolename", "")))
        if found:
            return found.group(1)
    return None


def reconcile_device_logins(db: Database, mqtt_url: str, *, client_id: str, timeout: float = 5.0) -> dict[str, int]:
    """Make the running broker's device logins agree with the ``devices`` table (see the module docstring).

    Args:
        db: the cloud's database (read; an audit entry per newly disabled login is written).
        mqtt_url: the cloud's broker URL (its login has the role :data:`~dangol_cloud.broker_auth.LOGINS_ROLE`).
        client_id: MQTT client id for this one connection (the cloud's login may use any).
        timeout: seconds for each exchange with the plugin.

    Returns:
        Counts: ``checked`` (device logins on the broker), ``deleted`` (unknown device), ``disabled`` (old password,
        disabled now), ``still_disabled`` (old password, disabled before), ``unmarked`` (no password mark), ``held``
        (unknown device, not deleted because the database has no devices at all).

    Raises:
        BrokerLoginError: the broker could not be asked or refused (no plugin, or a config without the logins role).
    """
    (listed,) = _answers(mqtt_url, [{"command": "listClients", "verbose": True, "count": -1, "offset": 0}],
                         client_id=client_id, timeout=timeout)
    if listed.get("error"):
        raise BrokerLoginError(f"the broker refused listClients: {listed['error']}")
    clients = (listed.get("data") or {}).get("clients") or []
    with db.sessions() as session:
        devices = {d.id: (d.mqtt_username, password_mark(d.mqtt_password_hash))
                   for d in session.scalars(select(Device))}
    counts = {"checked": 0, "deleted": 0, "disabled": 0, "still_disabled": 0, "unmarked": 0, "held": 0}
    commands: list[dict] = []
    stale: list[tuple[str, str, str]] = []
    fine: list[str] = []  # in line with the database: a warning about them is over
    for client in clients:
        device_id = _device_of(client)
        if device_id is None:
            continue
        counts["checked"] += 1
        username = client.get("username")
        known = devices.get(device_id)
        if known is None and not devices:
            counts["held"] += 1
            continue
        if known is None or known[0] != username:
            log.warning("broker login %s of %s device %s deleted", username,
                        "unknown" if known is None else "another username for", device_id)
            commands.append({"command": "deleteClient", "username": username})
            if known is None:
                commands.append({"command": "deleteRole", "rolename": f"device-{device_id}"})
            counts["deleted"] += 1
            continue
        text = str(client.get("textdescription") or "")
        if not text.startswith(MARK_PREFIX):
            counts["unmarked"] += 1
            log.warning("broker login %s has no password mark (a file from an older broker-config): its password "
                        "cannot be checked; run dangol-cloud broker-config and restart Mosquitto", username)
            continue
        if text[len(MARK_PREFIX):] == known[1]:
            if not client.get("disabled"):
                fine.append(device_id)
            continue
        if client.get("disabled"):
            counts["still_disabled"] += 1
            continue
        log.warning("broker login %s of device %s has an older password than the database's: disabled (give the box "
                    "a new password on the Stores page)", username, device_id)
        commands.append({"command": "disableClient", "username": username})
        stale.append((device_id, username, known[1]))
        counts["disabled"] += 1
    if commands:
        answers = _answers(mqtt_url, commands, client_id=client_id, timeout=timeout)
        refused = [f"{c['command']} {c.get('username') or c.get('rolename')}: {a['error']}"
                   for c, a in zip(commands, answers) if a.get("error") not in (None, "Role not found")]
        if refused:
            raise BrokerLoginError(f"the broker refused to bring device logins in line: {'; '.join(refused)}")
    with db.transaction() as session:
        for device_id, username, mark in stale:
            audit(session, "broker", STALE_ACTION, device_id=device_id, detail=f"db {mark}")
        for device_id in stale_logins(session, [session.get(Device, d) for d in fine] if fine else []):
            audit(session, "broker", FIXED_ACTION, device_id=device_id, detail=f"db {devices[device_id][1]}")
    if counts["held"]:
        log.error("the database has no devices but the broker has %d device logins: none deleted (is "
                  "DANGOL_DATABASE_URL the cloud's database? remove devices on the Stores page, or run broker-config)",
                  counts["held"])
    if counts["deleted"] or counts["disabled"] or counts["unmarked"]:
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
    rows = session.execute(select(AuditEntry.device_id, AuditEntry.action, AuditEntry.detail)
                           .where(AuditEntry.action.in_((STALE_ACTION, FIXED_ACTION)),
                                  AuditEntry.device_id.in_(list(marks)))
                           .order_by(AuditEntry.id))
    newest = {device_id: (action, detail) for device_id, action, detail in rows}  # the last one of each device
    return {device_id for device_id, (action, detail) in newest.items()
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
