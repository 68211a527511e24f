"""What an edge device may do, and what happens to the messages it may not send.

A device is untrusted: its login can be stolen with the box. Every edge → cloud event is checked against
the sending device's rights before anything is written (:func:`check_event`):

* **arrival**: the named customer must be *known at the device's store* (:func:`known_at_store`: created
  there, or with a purchase or visit there); an unknown face (no customer) is always fine. A customer the
  cloud no longer has (erased meanwhile) is recorded as an unknown face.
* **enrolment**: a new customer id becomes a customer *of this device's store* (never the id of an erased
  customer, which every store saw in the retained menus); an existing customer may
  only be changed by the device that enrolled them, only while ``pending`` (a name or a consent record for
  anybody else is refused, as is demoting an active customer). Status ``active`` needs a consent record: carried
  by the event, or already stored (recorded on the dashboard); a bare ``active`` would make a customer active with
  no consent and then refuse the real activation. A customer whose consent was withdrawn
  (status ``withdrawn``) is never enrolled again by a device, whatever the status or consent it sends.
* **erasure-done** with an erasure id: only as the answer to that erasure, for exactly its customer, by one of
  its target devices or by another box at a target's store (added after the erasure, it receives the erasure's
  re-sends too): such a box's confirmation is a harmless no-op — not a target, it confirms nothing
  (:func:`dangol_cloud.erasure.record_confirmation`, logged) — never refused nor dead-lettered. A confirmation of
  an erasure never issued, or not sent to the box's store, is refused. Without an erasure id (erased on the
  device's staff page) it becomes an :class:`~dangol_cloud.models.ErasureRequest` naming the device, which an
  owner confirms or dismisses — never an automatic chain-wide erasure; and only for customers known at the
  device's store.
* **retained** events: never applied (an event is sent once, never retained): :func:`record_retained_event`
  dead-letters each retained message once (kind ``retained``), however often the broker hands it over again.
* **timestamps**: ``ts`` (and a consent's ``recorded_at``) must lie in ``[now − MAX_EVENT_AGE,
  now + CLOCK_TOLERANCE]``; up to ``MAX_CLOCK_SKEW`` ahead it is clamped to the time received (a box
  whose clock runs fast), further ahead or older it is refused — except in an ``erasure-done`` answering an
  erasure the cloud issued, recorded at the time received (the box deleted it after the PUBACK: a refusal would
  leave the erasure pending for ever). A status ``ts`` is never trusted: the cloud records the time it received
  the status (:mod:`dangol_cloud.device_status`).

A refused message raises :class:`Refused`; :func:`record_dead_letter` keeps it (topic, reason, size,
SHA-256 — never the payload, which may hold a name) in the bounded ``dead_letters`` table and counts it
per device (``device_trust``), which the Stores page shows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import (
    Customer, CustomerOrigin, DeadLetter, Device, DeviceEvent, DeviceTrust, Erasure, Purchase, Visit, utcnow,
)

__all__ = ["CLOCK_TOLERANCE", "MAX_CLOCK_SKEW", "MAX_DEAD_LETTERS", "MAX_EVENT_AGE", "Refused", "bounded_ts",
           "check_event", "dead_letter_count", "known_at_store", "nul_field", "record_dead_letter",
           "record_retained_event", "trust_summary"]

log = logging.getLogger(__name__)

CLOCK_TOLERANCE = timedelta(minutes=5)
"""A device timestamp up to this far ahead of the cloud's clock is taken as it is (NTP jitter, latency)."""
MAX_CLOCK_SKEW = timedelta(hours=24)
"""A device timestamp further ahead than :data:`CLOCK_TOLERANCE` but within this is clamped to the time the
cloud received it; beyond this it is refused (``9999-12-31`` is not a clock error)."""
MAX_EVENT_AGE = timedelta(days=3 * 365)
"""Oldest event accepted: the longest retention allowed (``RETENTION_DAYS`` ≤ 1095, BIPA 740 ILCS 14/15(a)).
An older event would be erased by the next retention sweep anyway."""
MAX_DEAD_LETTERS = 1000
"""Dead letters kept (newest first); the per-device counts in ``device_trust`` keep counting beyond it."""


class Refused(Exception):
    """The device may not do what this message asks; ``str()`` is the reason (no personal data)."""


@dataclass(frozen=True)
class TrustRow:
    """One device's line on the Stores page: refused and dead-lettered message counts, last reason."""

    refused: int
    dead_letters: int
    last_reason: str | None
    last_at: datetime | None


def bounded_ts(ts: datetime, what: str, now: datetime | None = None) -> datetime:
    """A device-supplied time, checked against the cloud's clock.

    Returns:
        ``ts`` if within ``[now − MAX_EVENT_AGE, now + CLOCK_TOLERANCE]``; ``now`` if it is ahead by up to
        :data:`MAX_CLOCK_SKEW`.

    Raises:
        Refused: further ahead, or older than :data:`MAX_EVENT_AGE`; the message names ``what``.
    """
    now = now or utcnow()
    if ts > now + CLOCK_TOLERANCE:
        if ts > now + MAX_CLOCK_SKEW:
            raise Refused(f"{what} {ts.isoformat()} is more than {MAX_CLOCK_SKEW} ahead of the cloud's clock")
        return now
    if ts < now - MAX_EVENT_AGE:
        raise Refused(f"{what} {ts.isoformat()} is older than {MAX_EVENT_AGE.days} days")
    return ts


def known_at_store(session: Session, customer_id: str, store_id: str) -> bool:
    """True if the customer was created at ``store_id`` (enrolled by one of its devices, or assigned to it),
    or bought or visited there."""
    origin = session.get(CustomerOrigin, customer_id)
    if origin is not None and origin.store_id == store_id:
        return True
    bought = exists().where(Purchase.customer_id == customer_id, Purchase.store_id == store_id)
    visited = exists().where(Visit.customer_id == customer_id, Visit.store_id == store_id)
    return bool(session.scalar(select(bought | visited)))


def _check_arrival(session: Session, device: Device, event: proto.ArrivalEvent) -> None:
    if event.customer_id is None:
        return
    customer_id = str(event.customer_id)
    if session.get(Customer, customer_id) is not None and not known_at_store(session, customer_id, device.store_id):
        raise Refused(f"arrival names customer {customer_id}, who is not a customer of this device's store")


def _check_enrolment(session: Session, device: Device, event: proto.EnrolmentEvent) -> None:
    customer_id = str(event.customer_id)
    if event.consent is not None:
        bounded_ts(event.consent.recorded_at, "consent recorded_at")
    customer = session.get(Customer, customer_id)
    if event.status == "active" and event.consent is None and (customer is None or customer.consent_at is None):
        raise Refused(f"enrolment would make customer {customer_id} active without a consent record: an activation "
                      "must carry the consent staff recorded")
    if customer is None:  # a new customer of this device's store, unless the id belonged to an erased one
        if session.scalar(select(Erasure.id).where(Erasure.customer_id == customer_id).limit(1)) is not None:
            raise Refused(f"enrolment names customer {customer_id}, who was erased: a new enrolment needs a new id")
        return
    if customer.status not in ("pending", "active"):  # withdrawn: a device never undoes that
        raise Refused(f"enrolment names customer {customer_id}, whose consent was withdrawn "
                      f"(status {customer.status}): a device cannot enrol them again")
    origin = session.get(CustomerOrigin, customer_id)
    if origin is None or origin.device_id != device.id:
        raise Refused(f"enrolment names customer {customer_id}, who was not enrolled on this device")
    if customer.status == "active" and event.status == "pending":
        raise Refused(f"enrolment would make active customer {customer_id} pending again")
    if customer.status == "active" and (event.display_name or event.consent is not None):
        raise Refused(f"customer {customer_id} is no longer pending on this device: name and consent are kept")


def _sent_to_store(session: Session, erasure: Erasure, store_id: str) -> bool:
    """Whether ``erasure`` goes to ``store_id``: one of its target devices (that still exists) is at that store, so
    every box there receives it, including one added after the erasure, which is not a target."""
    targets = list(erasure.targets or [])
    return bool(targets) and bool(session.scalar(
        select(exists().where(Device.id.in_(targets), Device.store_id == store_id))))


def _check_erasure_done(session: Session, device: Device, event: proto.ErasureDoneEvent) -> None:
    ids = {str(c) for c in event.customer_ids}
    if event.erasure_id is not None:
        erasure = session.get(Erasure, str(event.erasure_id))
        if erasure is None:
            raise Refused(f"erasure-done answers erasure {event.erasure_id}, which the cloud never issued")
        if ids != {erasure.customer_id}:
            raise Refused(f"erasure-done for erasure {erasure.id} lists other customers than it named")
        if device.id not in (erasure.targets or []) and not _sent_to_store(session, erasure, device.store_id):
            raise Refused(f"erasure {erasure.id} was not sent to this device or its store")
        return
    for customer_id in sorted(ids):
        if session.get(Customer, customer_id) is not None and not known_at_store(session, customer_id,
                                                                                 device.store_id):
            raise Refused(f"erasure request names customer {customer_id}, who is not a customer of this "
                          "device's store")


def check_event(session: Session, device: Device, event) -> datetime:
    """Check one event against ``device``'s rights (module docstring) before it is applied.

    Also refuses an ``event_id`` another device already used (a replayed capture): one kept in
    ``device_events``, or, once that row was pruned, an arrival's kept in ``visits``.

    Returns:
        The event time to store (``event.ts``, or the time received if the device's clock is a little ahead, or if
        an ``erasure-done`` answering an erasure carries a time out of bounds).

    Raises:
        Refused: the device may not send this event; nothing may be written.
    """
    try:
        ts = bounded_ts(event.ts, "ts")
    except Refused as exc:
        if not (isinstance(event, proto.ErasureDoneEvent) and event.erasure_id is not None):
            raise
        ts = utcnow()  # the erasure id says what it answers; its rights are checked below as for any other
        log.warning("erasure-done %s from device %s: %s; recorded at the time received", event.event_id, device.id,
                    exc)
    owner = session.scalar(select(DeviceEvent.device_id).where(DeviceEvent.event_id == str(event.event_id)))
    if owner is None:  # an arrival whose event row was pruned (device_event_days): its visit keeps the id
        owner = session.scalar(select(Visit.device_id).where(Visit.event_id == str(event.event_id)))
    if owner is not None and owner != device.id:
        raise Refused(f"event_id {event.event_id} was already used by another device (replay)")
    if isinstance(event, proto.ArrivalEvent):
        _check_arrival(session, device, event)
    elif isinstance(event, proto.EnrolmentEvent):
        _check_enrolment(session, device, event)
    elif isinstance(event, proto.ErasureDoneEvent):
        _check_erasure_done(session, device, event)
    return ts


def record_dead_letter(session: Session, *, topic: str, payload: bytes, kind: str, reason: str,
                       device_id: str | None) -> DeadLetter:
    """Keep one message that was acknowledged but not applied, and count it for its device.

    Args:
        kind: ``invalid`` | ``refused`` | ``unknown-device`` | ``error`` | ``retained``.
        reason: why (no personal data: payload fields are never copied); a NUL character in it (a validation
            error quoting the bad character) is stored as ``\\x00``: PostgreSQL text cannot hold NUL.
        device_id: the device named by the topic, if it exists (counted in ``device_trust``).

    Only the newest :data:`MAX_DEAD_LETTERS` rows are kept. The caller commits.
    """
    topic, reason = topic.replace("\x00", "\\x00"), reason.replace("\x00", "\\x00")
    letter = DeadLetter(received_at=utcnow(), device_id=device_id, topic=topic[:255], kind=kind[:16],
                        reason=reason[:500], size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    session.add(letter)
    if device_id is not None and session.get(Device, device_id) is not None:
        trust = session.get(DeviceTrust, device_id)
        if trust is None:
            trust = DeviceTrust(device_id=device_id, refused=0, dead_letters=0)
            session.add(trust)
        if kind == "refused":
            trust.refused += 1
        else:
            trust.dead_letters += 1
        trust.last_reason, trust.last_at = f"{kind}: {reason}"[:500], letter.received_at
    session.flush()
    cut = session.scalar(select(DeadLetter.id).order_by(DeadLetter.id.desc()).offset(MAX_DEAD_LETTERS).limit(1))
    if cut is not None:
        session.execute(delete(DeadLetter).where(DeadLetter.id <= cut))
    return letter


RETAINED_REASON = ("a retained message on an events topic is never applied (an event is sent once, not retained); "
                   "the listener clears it on the broker")


def record_retained_event(session: Session, *, topic: str, payload: bytes) -> bool:
    """Dead-letter a *retained* message on a device's events topic (kind ``retained``: never applied), once: the
    same message (topic and SHA-256) already kept is not kept again — the broker hands it over on every
    subscription until it is cleared. The caller commits.

    Returns:
        True if it was recorded now, False if it already was.
    """
    digest = hashlib.sha256(payload).hexdigest()
    seen = session.scalar(select(DeadLetter.id).where(DeadLetter.kind == "retained", DeadLetter.sha256 == digest,
                                                      DeadLetter.topic == topic.replace("\x00", "\\x00")[:255])
                          .limit(1))
    if seen is not None:
        return False
    try:
        device_id = proto.parse_topic(topic).device_id
    except proto.TopicError:
        device_id = None
    record_dead_letter(session, topic=topic, payload=payload, kind="retained", reason=RETAINED_REASON,
                       device_id=device_id)
    return True


def nul_field(value, path: str = "payload") -> str | None:
    """Dotted path of the first string containing U+0000 in a JSON-like value, or None (PostgreSQL text cannot
    hold NUL, and no name or id needs one: such a message is a dead letter)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = nul_field(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def trust_summary(session: Session) -> dict[str, TrustRow]:
    """``device id → TrustRow`` for every device with a refused or dead-lettered message."""
    return {row.device_id: TrustRow(row.refused, row.dead_letters, row.last_reason, row.last_at)
            for row in session.scalars(select(DeviceTrust))}


def dead_letter_count(session: Session) -> int:
    """Dead letters currently kept (at most :data:`MAX_DEAD_LETTERS`)."""
    return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)
