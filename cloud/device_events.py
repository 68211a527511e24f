"""Apply one checked device event (``event/1``) to the database: arrivals become visits, enrolments create or
activate the device store's customers (consent through :func:`dangol_cloud.services.record_consent`, as the
dashboard records it), ``erasure-done`` confirms an erasure or records the device's erasure request. Called by
:func:`dangol_cloud.events.handle_message` once :mod:`dangol_cloud.device_trust` allowed the event."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.device_trust import Refused, bounded_ts
from dangol_cloud.erasure import audit, record_confirmation, scrubbed_payload
from dangol_cloud.models import Customer, CustomerOrigin, Device, DeviceEvent, Erasure, ErasureRequest, Visit, utcnow
from dangol_cloud.services import record_consent

__all__ = ["apply_event"]

log = logging.getLogger(__name__)


def _stored_payload(event) -> dict:
    """The event as kept in ``device_events``, minus personal fields (name, who recorded consent): those live
    only in the encrypted customer columns, so an erasure leaves no copy behind."""
    payload = event.model_dump(mode="json", by_alias=True)
    if isinstance(event, proto.EnrolmentEvent):
        payload["display_name"] = None
        if payload.get("consent"):
            payload["consent"]["recorded_by"] = None
    return payload


def _gone(session: Session, customer_id: str) -> bool:
    """True if no customer has this id (erased, or never reached the cloud) or an :class:`Erasure` names them
    (their consent was withdrawn: the devices are deleting their templates).

    The customer row is read ``FOR SHARE`` and stays locked until the arrival commits: an erasure locks it ``FOR
    UPDATE`` before its first scrub (:func:`dangol_cloud.erasure.erase_customer`), so the two never interleave on
    PostgreSQL. An arrival meeting an erasure in progress waits for it and finds the customer gone (stored
    scrubbed); an erasure meeting an arrival in progress waits for its commit, then scrubs its event and unlinks its
    visit. SQLite ignores the lock clause and has one writer at a time; an arrival deciding on a read made before an
    erasure's commit fails its visit's foreign key there, and :func:`dangol_cloud.event_store.store_message` applies
    it again."""
    if session.get(Customer, customer_id, with_for_update={"read": True}) is None:
        return True
    return session.scalar(select(Erasure.id).where(Erasure.customer_id == customer_id).limit(1)) is not None


def _apply_enrolment(session: Session, device: Device, event: proto.EnrolmentEvent) -> bool:
    """Create or update the enrolled customer; True if this event made them active (they were not)."""
    customer = session.get(Customer, str(event.customer_id))
    was_active = customer is not None and customer.status == "active"
    if customer is None:  # a new customer of this device's store
        customer = Customer(id=str(event.customer_id), source="edge", status="pending")
        session.add(customer)
        session.add(CustomerOrigin(customer_id=customer.id, store_id=device.store_id, device_id=device.id,
                                   created_at=utcnow()))
    elif customer.status not in ("pending", "active"):  # checked first by device_trust; never undo a withdrawal
        raise Refused(f"enrolment names customer {customer.id}, whose consent was withdrawn")
    if event.display_name:
        customer.display_name = event.display_name
    if event.consent is not None:  # the same service as the dashboard's consent form
        record_consent(session, customer, display_name=event.display_name, recorded_by=event.consent.recorded_by,
                       text_version=event.consent.text_version,
                       recorded_at=bounded_ts(event.consent.recorded_at, "consent recorded_at"),
                       actor=f"device:{device.id}", device_id=device.id)
    customer.status = event.status
    if customer.status == "active" and customer.consent_at is None:  # checked first by device_trust
        raise Refused(f"enrolment would make customer {customer.id} active without a consent record")
    return customer.status == "active" and not was_active


def _apply_erasure_request(session: Session, device: Device, event: proto.ErasureDoneEvent) -> None:
    """Erased on the device's staff page: recorded as a request naming the device, for an owner to confirm."""
    for customer_id in sorted({str(c) for c in event.customer_ids}):
        if session.get(Customer, customer_id) is None:
            continue  # never reached the cloud, or already erased
        pending = session.scalar(select(ErasureRequest.id).where(ErasureRequest.customer_id == customer_id,
                                                                  ErasureRequest.status == "pending"))
        if pending is None:
            session.add(ErasureRequest(event_id=str(event.event_id), device_id=device.id, customer_id=customer_id,
                                       requested_at=utcnow(), status="pending"))
            audit(session, f"device:{device.id}", "erasure-asked-by-device", customer_id=customer_id,
                  device_id=device.id, detail="erased on the device; waiting for an owner to confirm everywhere")


def apply_event(session: Session, device: Device, event, ts) -> str | None:
    """Record a checked event (:func:`dangol_cloud.device_trust.check_event` gave its time ``ts``) in the caller's
    transaction: the event row (:func:`_stored_payload`), and an arrival's visit, an enrolment's customer and
    consent, an ``erasure-done``'s confirmation or, without an erasure id, the device's erasure request.

    An arrival naming a customer who is gone or erased (:func:`_gone`: made at the door before the erasure reached
    the box, delivered after it, or applied while the erasure was in progress: the customer row's lock makes it wait
    for the erasure's commit) is a visit of nobody, and its event row is stored already scrubbed
    (:func:`dangol_cloud.erasure.scrubbed_payload`, as the erasure's scrub leaves the earlier ones).

    Returns:
        The id of the customer this event made active (an enrolment moving them from pending or new to active),
        else None: a re-sent or no-op ``active`` of an active customer returns None (nobody to welcome again).

    Raises:
        Refused: an enrolment names a customer whose consent was withdrawn, or would make one active without consent.
    """
    payload = _stored_payload(event)
    customer_id = str(event.customer_id) if isinstance(event, proto.ArrivalEvent) and event.customer_id else None
    if customer_id and _gone(session, customer_id):
        log.warning("arrival %s names unknown or erased customer %s; recorded as unknown, payload scrubbed",
                    event.event_id, customer_id)
        payload, customer_id = scrubbed_payload(payload, [customer_id]), None
    session.add(DeviceEvent(event_id=str(event.event_id), device_id=device.id, kind=event.kind, ts=ts, payload=payload))
    if isinstance(event, proto.ArrivalEvent):
        session.add(Visit(event_id=str(event.event_id), customer_id=customer_id, device_id=device.id,
                          store_id=device.store_id, ts=ts, confidence=event.confidence,
                          shown_items=list(event.shown_items)))
    elif isinstance(event, proto.EnrolmentEvent):
        return str(event.customer_id) if _apply_enrolment(session, device, event) else None
    elif isinstance(event, proto.ErasureDoneEvent) and event.erasure_id is not None:
        record_confirmation(session, session.get(Erasure, str(event.erasure_id)), device.id)
    elif isinstance(event, proto.ErasureDoneEvent):
        _apply_erasure_request(session, device, event)
    return None
