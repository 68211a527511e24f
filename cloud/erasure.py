"""Erasure of a customer everywhere, retention, and the audit log.

Flow (``cloud/README.md``, "Privacy and security"):

1. :func:`erase_customer` deletes the customer row (name, loyalty ref, consent record), their purchases
   and menu, and unlinks their visits (kept as anonymous counts), in the caller's transaction. It records
   an :class:`Erasure` whose ``targets`` are every device of the chain (for a customer the edge can know:
   enrolled there or with a consent record; purely imported history customers never reach a device) and an
   ``erasure-requested`` audit entry.
2. :func:`dangol_cloud.publishing.publish` clears the customer's retained menu at **every** store the first
   time it sends the erasure (:func:`menus_to_clear`: whichever devices still have to confirm, even none), and
   sends ``erasures/1`` (QoS 1, not retained) to every store that still has an unconfirmed target device.
   ``serve`` repeats the latter every ``erasure_republish_minutes`` and, for one device, when it comes online
   (or restarted) — so a device that was off gets it from its persistent session (client id
   ``dangol-edge-<device>``, ``clean_session=False``) or, if the broker lost the session, from the re-publish.
3. Each device answers ``erasure-done``; :func:`record_confirmation` adds it (audit ``erasure-confirmed``)
   and, once every target that still exists confirmed, completes the erasure (audit ``erasure-completed``).

A device that erased a customer on its own staff page sends ``erasure-done`` without an erasure id: that is
only an :class:`~dangol_cloud.models.ErasureRequest` naming the device (:mod:`dangol_cloud.events`), which an
owner confirms (:func:`decide_erasure_request` → :func:`erase_customer`) or dismisses on the Stores page.

The audit log never holds a name: customers appear by their random id only. An erasure asked for by or for
the customer (not a retention sweep) of a customer with a consent record also logs ``consent-withdrawn``; a
retention sweep of one logs ``consent-expired`` (either marks the erasure's menus to clear, :func:`menus_to_clear`).

Copies outside the customer tables go with the erasure too: the stored payloads of the devices' events
(:func:`scrub_device_events`: the customer's id, the items shown to them and their confidence scores are
removed; the ``event_id`` stays for duplicate and replay checks) and the saved recommender models
(:func:`scrub_saved_models`: their id and every per-customer row, :func:`dangol_cloud.recommend.persist.
scrub_customers`) and the POS API's remembered requests (:func:`scrub_pos_requests`). Device events are kept only
``device_event_days`` (:func:`prune_device_events`, daily in ``serve``), POS requests :data:`POS_REQUEST_DAYS`
(:func:`run_retention`), and training keeps only the current model (:mod:`dangol_cloud.training`). The scrubbing of
those copies lives in :mod:`dangol_cloud.erasure_copies` (re-exported here).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from dangol_cloud.erased_refs import remember_erased_ref
from dangol_cloud.erasure_copies import (
    POS_REQUEST_DAYS, scrub_device_events, scrub_pos_requests, scrub_saved_models, scrubbed_payload,
)
from dangol_cloud.models import (
    AuditEntry, Customer, CustomerOrigin, Device, DeviceEvent, Erasure, ErasureRequest, Menu, PosRequest, Purchase,
    Visit, utcnow,
)

__all__ = ["CONSENT_ENDED", "POS_REQUEST_DAYS", "audit", "complete_if_done", "decide_erasure_request",
           "erase_customer", "menus_to_clear", "pending_erasures", "prune_device_events", "record_confirmation",
           "retention_candidates", "run_retention", "scrub_device_events", "scrub_pos_requests", "scrub_saved_models",
           "scrubbed_payload", "unconfirmed_devices", "unpublished_erasures"]

log = logging.getLogger(__name__)


def audit(session: Session, actor: str, action: str, *, customer_id: str | None = None,
          erasure_id: str | None = None, device_id: str | None = None, detail: str = "") -> AuditEntry:
    """Append one audit entry (the caller commits). ``detail`` must not contain a person's name."""
    entry = AuditEntry(actor=actor[:254], action=action, customer_id=customer_id, erasure_id=erasure_id,
                       device_id=device_id, detail=detail, at=utcnow())
    session.add(entry)
    return entry


def erase_customer(session: Session, customer_id: str, *, actor: str, reason: str = "request",
                   confirmed_device: str | None = None, scrub: bool = True,
                   kept_before: datetime | None = None) -> Erasure:
    """Delete a customer's personal data and history now and queue the erasure for every device.

    Args:
        customer_id: the customer's id.
        actor: who asked (dashboard e-mail, ``cli``, ``retention``, ``device:<id>``), for the audit log.
        reason: ``request`` or ``retention`` (audit detail).
        confirmed_device: a device that already erased the customer itself (edge staff page).
        scrub: also remove the customer from stored device events, POS requests and saved models now (the audit
            entry says from how many models); False only for a caller that scrubs a batch itself (retention).
        kept_before: a retention erasure's start of the retention period (aware UTC): the customer's sales from
            then on may come in again as a new customer (``Erasure.kept_before``, :mod:`dangol_cloud.erased_refs`).

    The customer row is locked ``FOR UPDATE`` (until the commit) before any scrub; an arrival reads it ``FOR SHARE``
    (:mod:`dangol_cloud.device_events`), so one applied meanwhile either committed first (scrubbed and unlinked here)
    or waits for this commit and is stored scrubbed. SQLite ignores the clause (one writer at a time).

    Returns:
        The new :class:`Erasure` (flushed; the caller commits).

    Raises:
        LookupError: no such customer.
        OSError / ValueError: a saved model folder exists but cannot be rewritten (nothing is committed).
    """
    customer = session.get(Customer, customer_id, with_for_update=True, populate_existing=True)
    if customer is None:
        raise LookupError(f"customer {customer_id}: no such customer")
    scrubbed = ""
    if scrub:
        events = scrub_device_events(session, [customer_id])
        models = scrub_saved_models(session, [customer_id])
        scrubbed = f"; device events scrubbed: {events}; removed from {models} saved model(s)"
        scrubbed += f"; POS requests deleted: {scrub_pos_requests(session, [customer_id])}"
    on_edge = customer.source == "edge" or customer.consent_at is not None
    loyalty = customer.external_ref, customer.external_ref_hash  # kept out of later imports (erased_refs)
    session.execute(delete(Menu).where(Menu.customer_id == customer_id))
    session.execute(delete(Purchase).where(Purchase.customer_id == customer_id))
    session.execute(update(Visit).where(Visit.customer_id == customer_id).values(customer_id=None))
    session.execute(delete(CustomerOrigin).where(CustomerOrigin.customer_id == customer_id))
    session.delete(customer)
    targets = list(session.scalars(select(Device.id).order_by(Device.id))) if on_edge else []
    confirmed = [confirmed_device] if confirmed_device in targets else []
    now = utcnow()
    erasure = Erasure(customer_id=customer_id, requested_by=actor[:254], requested_at=now, targets=targets,
                      confirmed_by=confirmed, completed_at=None if set(targets) - set(confirmed) else now,
                      kept_before=kept_before if reason == "retention" else None)
    session.add(erasure)
    session.flush()
    remember_erased_ref(session, ref=loyalty[0], ref_hash=loyalty[1], customer_id=customer_id, erasure=erasure,
                        retention=reason == "retention")
    session.execute(update(ErasureRequest).where(ErasureRequest.customer_id == customer_id,
                                                 ErasureRequest.status == "pending")
                    .values(status="confirmed", decided_by=actor[:254], decided_at=now, erasure_id=erasure.id))
    if customer.consent_at is not None:  # consent ends with it; the audit entry also marks a menu to clear
        audit(session, actor, "consent-withdrawn" if reason != "retention" else "consent-expired",
              customer_id=customer_id, erasure_id=erasure.id,
              detail=f"consent of {customer.consent_at:%Y-%m-%d}, text version {customer.consent_text_version}")
    audit(session, actor, "erasure-requested", customer_id=customer_id, erasure_id=erasure.id,
          detail=f"reason={reason}; devices to confirm: {len(targets) - len(confirmed)}{scrubbed}")
    if confirmed_device in confirmed:
        audit(session, actor, "erasure-confirmed", customer_id=customer_id, erasure_id=erasure.id,
              device_id=confirmed_device)
    if erasure.completed_at is not None:
        audit(session, actor, "erasure-completed", customer_id=customer_id, erasure_id=erasure.id,
              detail="no device holds this customer" if not targets else "")
    log.info("customer %s erased (%s, by %s); %d device(s) to confirm", customer_id, reason, actor,
             len(targets) - len(confirmed))
    return erasure


def decide_erasure_request(session: Session, request_id: int, *, actor: str, confirm: bool) -> Erasure | None:
    """An owner's answer to a device's erasure request (:class:`ErasureRequest`, Stores page).

    ``confirm``: erase the customer everywhere (:func:`erase_customer`, the asking device counted as having
    confirmed, since it erased them already); otherwise the request is dismissed (audited) and nothing is
    erased. The caller commits (and publishes the erasure).

    Returns:
        The new :class:`Erasure` when confirmed and the customer still existed, else None.

    Raises:
        LookupError: no pending request with that id.
    """
    request = session.get(ErasureRequest, request_id)
    if request is None or request.status != "pending":
        raise LookupError(f"erasure request {request_id}: no such pending request")
    if not confirm:
        request.status, request.decided_by, request.decided_at = "dismissed", actor[:254], utcnow()
        audit(session, actor, "erasure-request-dismissed", customer_id=request.customer_id,
              device_id=request.device_id, detail=f"asked by device {request.device_id}")
        return None
    if session.get(Customer, request.customer_id) is None:
        request.status, request.decided_by, request.decided_at = "confirmed", actor[:254], utcnow()
        return None
    return erase_customer(session, request.customer_id, actor=actor, reason=f"asked by device {request.device_id}",
                          confirmed_device=request.device_id)


def pending_erasures(session: Session) -> list[Erasure]:
    """Erasures some target device has not confirmed yet (oldest first)."""
    return list(session.scalars(select(Erasure).where(Erasure.completed_at.is_(None))
                                .order_by(Erasure.requested_at)))


#: Audit actions that end a consent, naming the erasure (:func:`erase_customer`, and the dashboard's withdrawal in
#: :mod:`dangol_cloud.web.customers`): the customer had a consent record, so their menu may have been published.
CONSENT_ENDED = ("consent-withdrawn", "consent-expired")


def unpublished_erasures(session: Session) -> list[Erasure]:
    """Erasures never published yet (``published_at`` unset), confirmed or not, oldest first: even one complete at
    once (the asking device confirmed it, or no device exists) still has its retained menus to clear."""
    return list(session.scalars(select(Erasure).where(Erasure.published_at.is_(None)).order_by(Erasure.requested_at)))


def menus_to_clear(session: Session, erasures: list[Erasure]) -> list[Erasure]:
    """Those of ``erasures`` whose customer may have a retained menu on the broker: a device may know them
    (``targets``), or they had a consent record (an audit entry of :data:`CONSENT_ENDED` names the erasure) —
    menus are published only for consenting customers. A purely imported customer's erasure has neither."""
    ids = [e.id for e in erasures if not e.targets]
    consented: set[str] = set()
    for start in range(0, len(ids), 500):
        consented.update(session.scalars(select(AuditEntry.erasure_id).where(
            AuditEntry.action.in_(CONSENT_ENDED), AuditEntry.erasure_id.in_(ids[start:start + 500]))))
    return [e for e in erasures if e.targets or e.id in consented]


def unconfirmed_devices(session: Session, erasure: Erasure) -> list[Device]:
    """Target devices of ``erasure`` that still exist and have not confirmed."""
    waiting = set(erasure.targets or []) - set(erasure.confirmed_by or [])
    if not waiting:
        return []
    return list(session.scalars(select(Device).where(Device.id.in_(waiting))))


def complete_if_done(session: Session, erasure: Erasure, actor: str) -> bool:
    """Mark ``erasure`` complete (with an audit entry) if no existing target device still has to confirm,
    e.g. after the last confirmation or after an unconfirmed device was removed. Returns True if completed now."""
    if erasure.completed_at is None and not unconfirmed_devices(session, erasure):
        erasure.completed_at = utcnow()
        audit(session, actor, "erasure-completed", customer_id=erasure.customer_id, erasure_id=erasure.id)
        return True
    return False


def record_confirmation(session: Session, erasure: Erasure, device_id: str) -> bool:
    """Record a device's ``erasure-done`` (idempotent); completes the erasure when every target confirmed.

    A device that is not a target (a box added to a target's store after the erasure, which receives its re-sends:
    :mod:`dangol_cloud.device_trust` lets only such a box through) confirms nothing: a logged no-op, so
    ``confirmed_by`` holds targets only.

    Returns:
        True if this confirmation was new (and from a target).
    """
    if device_id not in (erasure.targets or []):
        log.info("erasure %s confirmed by device %s, which is not one of its targets (added later): nothing to record",
                 erasure.id, device_id)
        return False
    if device_id in (erasure.confirmed_by or []):
        return False
    erasure.confirmed_by = [*(erasure.confirmed_by or []), device_id]
    audit(session, f"device:{device_id}", "erasure-confirmed", customer_id=erasure.customer_id,
          erasure_id=erasure.id, device_id=device_id)
    complete_if_done(session, erasure, f"device:{device_id}")
    return True


def retention_candidates(session: Session, days: int, now: datetime | None = None) -> list[str]:
    """Ids of customers not seen for ``days`` days: created before the cut-off, with no visit and no
    purchase since (so a freshly imported history is kept ``days`` days from its import). A purchase dated after
    the latest plausible sale time (:func:`dangol_cloud.sale_rules.latest_sale_ts`, e.g. 2205 for 2025, stored
    before imports bounded sale times) is no sign of the customer: it never keeps them for ever."""
    from dangol_cloud.sale_rules import latest_sale_ts

    cut = (now or utcnow()) - timedelta(days=days)
    recent_visit = exists().where(Visit.customer_id == Customer.id, Visit.ts >= cut)
    recent_purchase = exists().where(Purchase.customer_id == Customer.id, Purchase.ts >= cut,
                                     Purchase.ts <= latest_sale_ts(max(now or utcnow(), utcnow())))
    return list(session.scalars(select(Customer.id).where(Customer.created_at < cut, ~recent_visit,
                                                          ~recent_purchase).order_by(Customer.created_at)))


def run_retention(session: Session, days: int, now: datetime | None = None) -> list[str]:
    """Erase every customer not seen for ``days`` days (:func:`retention_candidates`), remove them from the
    stored device events, POS requests and saved models in one batch, delete the POS requests older than
    :data:`POS_REQUEST_DAYS` (past any retry), and log the run.

    The candidates are locked ``FOR UPDATE`` and read again: one whose arrival or sale committed meanwhile is kept;
    an arrival naming one of them during the sweep waits for its commit and is stored scrubbed (:func:`erase_customer`).

    Returns:
        The erased customer ids (the caller commits, then publishes the erasures).

    Raises:
        OSError / ValueError: a saved model folder exists but cannot be rewritten (nothing is committed).
    """
    locked = _lock_customers(session, retention_candidates(session, days, now))
    ids = [customer_id for customer_id in retention_candidates(session, days, now) if customer_id in locked]
    period_start = (now or utcnow()) - timedelta(days=days)  # their sales from then on may still come in
    for customer_id in ids:
        erase_customer(session, customer_id, actor="retention", reason="retention", scrub=False,
                       kept_before=period_start)
    events = scrub_device_events(session, ids)
    cut = (now or utcnow()) - timedelta(days=POS_REQUEST_DAYS)
    pos = scrub_pos_requests(session, ids) + (
        session.execute(delete(PosRequest).where(PosRequest.created_at < cut)).rowcount or 0)
    models = scrub_saved_models(session, ids)
    audit(session, "retention", "retention-run", detail=f"retention_days={days}; device events scrubbed: {events}; "
                                                        f"POS requests deleted: {pos}; "
                                                        f"removed from {models} saved model(s); erased {len(ids)}")
    return ids


def _lock_customers(session: Session, customer_ids: list[str]) -> set[str]:
    """Lock ``customer_ids`` ``FOR UPDATE`` in id order (no deadlock between sweeps); returns those that exist."""
    wanted, found = sorted(set(customer_ids)), set()
    for start in range(0, len(wanted), 500):
        found.update(session.scalars(select(Customer.id).where(Customer.id.in_(wanted[start:start + 500]))
                                     .order_by(Customer.id).with_for_update()))
    return found


def prune_device_events(session: Session, days: int, now: datetime | None = None) -> int:
    """Delete device events received more than ``days`` days ago (``device_event_days``; daily in ``serve``).

    Enrolment events are kept while their customer exists (the dashboard's staff scope reads them to tell
    which store enrolled a customer); arrivals, erasure-done events and the enrolments of customers who are
    gone are deleted. Replays stay harmless after the window: an arrival's ``event_id`` is unique in
    ``visits`` (a redelivery is a duplicate, another device's copy is refused), an erased customer's id is
    refused for enrolment, and an erasure confirmation is idempotent. The caller commits.

    Returns:
        The number of events deleted.
    """
    cut = (now or utcnow()) - timedelta(days=days)
    old = DeviceEvent.received_at < cut
    deleted = session.execute(delete(DeviceEvent).where(old, DeviceEvent.kind != "enrolment")).rowcount or 0
    enrolments = {event_id: str(payload.get("customer_id")) if isinstance(payload, dict) else "" for event_id, payload
                  in session.execute(select(DeviceEvent.event_id, DeviceEvent.payload)
                                     .where(old, DeviceEvent.kind == "enrolment"))}
    named = sorted(set(enrolments.values()))
    living: set[str] = set()
    for start in range(0, len(named), 500):
        living.update(session.scalars(select(Customer.id).where(Customer.id.in_(named[start:start + 500]))))
    gone = sorted(event_id for event_id, customer_id in enrolments.items() if customer_id not in living)
    for start in range(0, len(gone), 500):
        deleted += session.execute(delete(DeviceEvent).where(DeviceEvent.event_id.in_(gone[start:start + 500]))
                                   ).rowcount or 0
    if deleted:
        log.info("pruned %d device events received before %s", deleted, cut.isoformat(timespec="minutes"))
    return deleted
