"""Store one validated device message in its own transaction, for :func:`dangol_cloud.events.handle_message`.

:func:`store_message` applies a status (:mod:`dangol_cloud.device_status`) or a checked event
(:mod:`dangol_cloud.device_trust`, :mod:`dangol_cloud.device_events`). An ``IntegrityError`` at commit is not taken
for a duplicate unless it is one: only a unique violation on the event's ``event_id`` (its ``device_events`` row or
its visit, :func:`duplicate_event_id`) means a concurrent delivery of the same event won the race. Any other (a
visit's customer erased after the arrival was checked: a foreign key; a customer enrolled by a concurrent copy) means
the database changed under the transaction: the message is applied once more, as what it is now (an erased
customer's arrival is stored scrubbed, as any late arrival of theirs), and a second failure propagates, to be
dead-lettered — never acknowledged as a duplicate with nothing stored.
"""

from __future__ import annotations

import logging
from enum import Enum

from sqlalchemy import exc as sa_exc
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.device_events import apply_event
from dangol_cloud.device_status import apply_status
from dangol_cloud.device_trust import check_event
from dangol_cloud.models import Device, DeviceEvent

__all__ = ["EVENT_ID_CONSTRAINTS", "Outcome", "duplicate_event_id", "store_message"]

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """What :func:`dangol_cloud.events.handle_message` did with a message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    REFUSED = "refused"
    UNKNOWN_DEVICE = "unknown-device"
    ERROR = "error"
    IGNORED = "ignored"
    #: a retained status of a device that no longer exists (removed), or the cloud's clear of such a device's events
    #: topic: counted, never dead-lettered
    FORGOTTEN_DEVICE = "forgotten-device"
    #: a retained message on an events topic: never applied, dead-lettered once, cleared by the listener
    RETAINED = "retained"


#: PostgreSQL's names of the unique constraints on an event's ``event_id`` (default names of migration 0001).
EVENT_ID_CONSTRAINTS = frozenset({"device_events_pkey", "visits_event_id_key"})
#: SQLite's message for the same: ``UNIQUE constraint failed: <table>.<column>``.
_SQLITE_EVENT_ID = ("UNIQUE constraint failed: device_events.event_id", "UNIQUE constraint failed: visits.event_id")


def duplicate_event_id(exc: sa_exc.IntegrityError) -> bool:
    """Whether ``exc`` is a unique violation on an event's ``event_id`` (another transaction stored the same event),
    on PostgreSQL (SQLSTATE 23505 on :data:`EVENT_ID_CONSTRAINTS`) or SQLite; False for any other integrity error."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:  # psycopg
        diag = getattr(orig, "diag", None)
        return sqlstate == "23505" and getattr(diag, "constraint_name", None) in EVENT_ID_CONSTRAINTS
    return str(orig).startswith(_SQLITE_EVENT_ID)


def store_message(db: Database, topic: str, message, *, retained: bool) -> tuple[Outcome, bool, str | None]:
    """Apply a validated message in one transaction (module docstring); returns the outcome, whether a status showed
    the device coming online, and the customer an enrolment made active.

    Raises:
        Refused: the device may not send it. LookupError: unknown device. IntegrityError: the second attempt failed
            too, not as a duplicate (the caller dead-letters it).
    """
    for attempt in (1, 2):
        try:
            return _store(db, topic, message, retained=retained)
        except sa_exc.IntegrityError as exc:
            if duplicate_event_id(exc):
                log.info("duplicate event on %r ignored (concurrent insert)", topic)
                return Outcome.DUPLICATE, False, None
            if attempt == 2:
                raise
            log.warning("message on %r met a concurrent change (%s); applying it again",
                        topic, (str(exc.orig).splitlines() or ["?"])[0][:200])
    raise AssertionError("unreachable")


def _store(db: Database, topic: str, message, *, retained: bool) -> tuple[Outcome, bool, str | None]:
    device_id = str(message.device_id)
    with db.transaction() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise LookupError(f"unknown device {device_id}")
        if isinstance(message, proto.Status):
            return Outcome.STORED, apply_status(device, message, retained=retained), None
        stored_by = session.scalar(select(DeviceEvent.device_id).where(DeviceEvent.event_id == str(message.event_id)))
        if stored_by == device.id:
            log.info("duplicate event %s on %r ignored", message.event_id, topic)
            return Outcome.DUPLICATE, False, None
        ts = check_event(session, device, message)
        made_active = apply_event(session, device, message, ts)
    return Outcome.STORED, False, made_active
