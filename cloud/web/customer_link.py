"""Link a door enrolment to an existing loyalty customer (issue 11, build 6), and a customer's day-part picks.

A regular who signs up at the door becomes a new customer (``source="edge"``: the face templates on the devices
and the consent record belong to that id). If the same person already has a loyalty record with purchase history
(imported or from the POS), the owner links the two: **the door enrolment's id survives** (the devices know it;
no template moves), and the loyalty customer's purchases, door visits, pick credits and opinions, segment and
loyalty reference (``external_ref`` and its keyed hash) move onto it; the loyalty record is then deleted. One
audit entry (``customers-linked``, ids only) records it. The loyalty record's menu is dropped; the door
enrolment keeps the menu its door shows, without the picks the moved dislikes rule out
(:func:`~dangol_cloud.feedback.drop_disliked_picks`), and the route republishes it at once (the app's
:class:`~dangol_cloud.background.MenuRepublisher`), so a dislike the loyalty record carried leaves the door now;
the next training computes the picks from the joined history.

An imported line's idempotency key is a keyed hash of its content, which names its customer
(:mod:`dangol_cloud.purchase_keys`), and after the link the loyalty number in an imported file resolves to the door
enrolment: so the moved lines are re-keyed under the door enrolment's id in the same transaction, each keeping its
occurrence (:func:`~dangol_cloud.purchase_keys.moved_keys`), and re-importing a file adds nothing. A moved line
identical to one the door enrolment already has (one under each id) takes the next free occurrence: both are kept.
The POS API's remembered requests (``pos_requests``) whose response names the loyalty id now name the door
enrolment, so a till's retry of a sale made before the link is answered with the customer who holds it (and an
erasure of the door enrolment finds those requests, :func:`~dangol_cloud.erasure.scrub_pos_requests`); POS lines'
own keys name no customer and stay.

The loyalty customer may have consent of its own when it was recorded on the dashboard (a history customer is
never enrolled at a door, so no device holds its face): the door enrolment's consent and face win, the dashboard
record goes with the loyalty record (its ``consent-recorded`` audit entry stays, and the ``customers-linked``
entry says it was replaced), and since that consent sent the loyalty id a menu, an erasure of the old id is queued
for every device (:class:`~dangol_cloud.models.Erasure`: each store clears that retained menu, no template
exists). Two door enrolments are never merged (each has a face on the devices: erase the duplicate).

Route on the ``customers`` blueprint: ``POST /customers/<door id>/link`` with ``loyalty`` (a loyalty number or a
customer id), confirmed on a second page (``confirm=yes``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import abort, current_app, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.crypto import keyring_of
from dangol_cloud.erasure import audit
from dangol_cloud.feedback import drop_disliked_picks
from dangol_cloud.models import (
    Customer, Device, Erasure, Menu, PosRequest, Purchase, Visit, external_ref_hash, utcnow,
)
from dangol_cloud.models_ops import CustomerSegment, MenuDayparts, PickCredit, PickOpinion
from dangol_cloud.mqtt import MqttError
from dangol_cloud.purchase_keys import IMPORT_KEY, content_of, keyed, moved_keys
from dangol_cloud.publishing import republish_erasures
from dangol_cloud.sale_locks import busy_message, try_hold_sale_keys
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.customers import bp
from dangol_cloud.web.forms import ActionForm

__all__ = ["LinkError", "LinkReport", "daypart_picks", "find_loyalty_customer", "link_customers"]

log = logging.getLogger(__name__)


class LinkError(ValueError):
    """The two customers cannot be linked; the message says why (shown to the owner)."""


@dataclass(frozen=True)
class LinkReport:
    """What :func:`link_customers` moved onto the door enrolment."""

    purchases: int
    visits: int
    opinions: int
    erasure_id: str | None = None  # the erasure queued for the loyalty id (it had consent, so a menu), if any


def find_loyalty_customer(session: Session, text: str) -> Customer | None:
    """The customer named by ``text``: a loyalty number (exact, through the keyed hash) or a customer id."""
    text = (text or "").strip()[:120]
    if not text:
        return None
    found = session.scalar(select(Customer).where(Customer.external_ref_hash == external_ref_hash(session, text)))
    return found or session.get(Customer, text.lower())


def link_customers(session: Session, door: Customer, loyalty: Customer, *, actor: str) -> LinkReport:
    """Merge ``loyalty`` into ``door`` (see the module docstring); the caller commits, then republishes the door
    customer's menu (:func:`~dangol_cloud.feedback.republish_menus`): its stored picks lose what the moved dislikes
    rule out here.

    A ``loyalty`` customer with consent recorded on the dashboard is merged too: the door's consent wins, and an
    erasure of the loyalty id is queued for every device (its menu was sent with that consent); the caller then
    publishes it (:func:`~dangol_cloud.publishing.republish_erasures`).

    Re-keys the moved lines under the sale-keys lock (:mod:`dangol_cloud.sale_locks`), taken without waiting.

    Raises:
        LinkError: ``door`` was not enrolled at the door, ``loyalty`` was (two enrolments are not merged: each has
            a face on the devices), they are the same customer, ``door`` already has a loyalty reference, or an
            import is running (the lock is held; SQLite: busy past its timeout).
    """
    if door.id == loyalty.id:
        raise LinkError("that is this customer")
    if door.source != "edge":
        raise LinkError("only a customer enrolled at the door can be linked to a loyalty customer")
    if loyalty.source == "edge":
        raise LinkError("the other customer was enrolled at the door too: erase the duplicate instead")
    if door.external_ref_hash is not None:
        raise LinkError("this customer is already linked to a loyalty number")
    _hold_sale_keys(session)
    replaced = (f"; its consent recorded on the dashboard ({loyalty.consent_at:%Y-%m-%d}, text version "
                f"{loyalty.consent_text_version}) replaced by the door enrolment's" if loyalty.has_consent else "")
    moved = _move_purchases(session, loyalty.id, door.id)
    _repoint_pos_requests(session, loyalty.id, door.id)
    visits = session.execute(update(Visit).where(Visit.customer_id == loyalty.id).values(customer_id=door.id)).rowcount
    session.execute(update(PickCredit).where(PickCredit.customer_id == loyalty.id).values(customer_id=door.id))
    own = set(session.scalars(select(PickOpinion.item_id).where(PickOpinion.customer_id == door.id)))
    opinions = 0
    for op in session.scalars(select(PickOpinion).where(PickOpinion.customer_id == loyalty.id)).all():
        if op.item_id not in own:  # the door customer's own opinion wins
            session.add(PickOpinion(customer_id=door.id, item_id=op.item_id, opinion=op.opinion, at=op.at, by=op.by))
            opinions += 1
        session.delete(op)
    segment = session.get(CustomerSegment, loyalty.id)
    if segment is not None:
        if session.get(CustomerSegment, door.id) is None:
            session.add(CustomerSegment(customer_id=door.id, age_group=segment.age_group, area=segment.area))
        session.delete(segment)
    for table in (Menu, MenuDayparts):  # the door's stays (what its door shows) until the next training
        session.execute(delete(table).where(table.customer_id == loyalty.id))
    session.flush()
    drop_disliked_picks(session, door.id)  # ... without what the moved dislikes rule out
    ref, ref_hash = loyalty.external_ref, loyalty.external_ref_hash
    loyalty_id, had_consent = loyalty.id, loyalty.has_consent
    session.delete(loyalty)
    session.flush()  # the unique loyalty hash is free before the door customer takes it
    door.external_ref, door.external_ref_hash = ref, ref_hash
    erasure_id = None
    if had_consent:  # its menu went to the stores with that consent: clear it there under the old id
        targets = list(session.scalars(select(Device.id).order_by(Device.id)))
        erasure = Erasure(customer_id=loyalty_id, requested_by=actor[:254], requested_at=utcnow(), targets=targets,
                          confirmed_by=[], completed_at=None if targets else utcnow())
        session.add(erasure)
        session.flush()
        erasure_id = erasure.id
    audit(session, actor, "customers-linked", customer_id=door.id, erasure_id=erasure_id,
          detail=f"loyalty customer {loyalty_id} merged into door enrolment {door.id}: {moved} purchase lines, "
                 f"{visits} visits, {opinions} opinions moved{replaced}")
    return LinkReport(purchases=moved, visits=visits, opinions=opinions, erasure_id=erasure_id)


def _hold_sale_keys(session: Session) -> None:
    """Hold the sale-keys lock (:mod:`dangol_cloud.sale_locks`) for the re-keying, without waiting for an import:
    one running keys its lines by the customer ids in force when it started.

    Raises:
        LinkError: an import (any process) holds the lock, or SQLite stayed busy past its timeout.
    """
    try:
        held = try_hold_sale_keys(session)
    except OperationalError as exc:
        if (busy := busy_message(exc)) is None:
            raise
        raise LinkError(busy) from exc
    if not held:
        raise LinkError("an import is running (perhaps from another process) and it files sales by the customers "
                        "it found when it started; link them once it has finished")


def _move_purchases(session: Session, from_id: str, to_id: str) -> int:
    """Move ``from_id``'s purchase lines onto ``to_id``, each imported line re-keyed under ``to_id``
    (:func:`~dangol_cloud.purchase_keys.moved_keys`: its occurrence kept, a clash with ``to_id``'s own lines given
    the next free one); POS lines keep their keys. Returns the number of lines moved."""
    key = keyed(keyring_of(session.get_bind().dialect))
    lines = session.execute(select(Purchase.id, Purchase.idempotency_key, Purchase.store_id, Purchase.item_id,
                                   Purchase.product_id, Purchase.ts, Purchase.quantity, Purchase.amount)
                            .where(Purchase.customer_id == from_id).order_by(Purchase.id)).all()
    rows = [(pid, stored, content_of(store_id=store, customer_id=from_id, item_id=item, product_id=product, ts=ts,
                                     quantity=quantity, amount=amount))
            for pid, stored, store, item, product, ts, quantity, amount in lines if IMPORT_KEY.match(stored)]
    if rows:
        taken = set(session.scalars(select(Purchase.idempotency_key).where(Purchase.customer_id == to_id)))
        table = Purchase.__table__  # core executemany, as the importer files lines (ingest._match_other_copies)
        session.execute(update(table).where(table.c.id == bindparam("pid")).values(idempotency_key=bindparam("key")),
                        [{"pid": pid, "key": new} for pid, new in moved_keys(rows, to_id, key, taken).items()])
    session.execute(update(Purchase).where(Purchase.customer_id == from_id).values(customer_id=to_id))
    return len(lines)


def _repoint_pos_requests(session: Session, from_id: str, to_id: str) -> int:
    """Make the remembered POS requests whose response names ``from_id`` name ``to_id`` (the purchase ids in it
    are unchanged: the lines moved). Returns how many."""
    named = PosRequest.response["customer_id"].as_string() == from_id  # as erasure.scrub_pos_requests finds them
    requests = session.scalars(select(PosRequest).where(named)).all()
    for remembered in requests:
        remembered.response = {**remembered.response, "customer_id": to_id}
    return len(requests)


@bp.route("/<customer_id>/link", methods=["POST"])
@owner_required
def link(customer_id: str):
    """POST /customers/<door id>/link: ``loyalty`` = loyalty number or customer id; the first post answers with
    the confirmation page (what moves, what is deleted), the second (``confirm=yes``) links."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    door = s.get(Customer, customer_id) or abort(404)
    wanted = (request.form.get("loyalty") or "").strip()
    back = url_for("customers.show", customer_id=door.id)
    loyalty = find_loyalty_customer(s, wanted)
    if loyalty is None:
        flash(f"No customer with loyalty number or id {wanted[:40]!r}.", "error")
        return redirect(back)
    lines = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == loyalty.id))
    label = f"loyalty number {loyalty.external_ref}" if loyalty.external_ref else f"customer {loyalty.id[:8]}"
    consent = (f" Its consent recorded on the dashboard ({loyalty.consent_at:%Y-%m-%d}) is replaced by the door's."
               if loyalty.has_consent and loyalty.source != "edge" else "")
    page = confirmation_page(
        title=f"Link {door.display_name or 'this door enrolment'} to {label}?", button="Link customers",
        detail=f"The {lines:,} purchase lines and the visits of {label} move to this customer, who keeps the "
               "name, consent and face templates from the door. The separate loyalty record is then deleted "
               f"(written to the audit log); what it said is not for them leaves this customer's menu now, and the "
               f"picks are recomputed at the next training.{consent} This cannot be "
               "undone.",
        cancel_url=back, keep=[("loyalty", wanted)])
    if page is not None:
        return page
    loyalty_id = loyalty.id
    try:
        report = link_customers(s, door, loyalty, actor=current_user.email)
    except LinkError as exc:
        s.rollback()
        flash(f"Not linked: {exc}.", "error")
        return redirect(back)
    s.commit()
    flash(f"Linked: {report.purchases:,} purchase lines and {report.visits:,} visits now belong to this customer. "
          "The picks follow at the next training.", "success")
    settings = get_settings()
    if settings.mqtt_url:  # the door's menu without the moved dislikes, from the republisher's thread
        current_app.extensions["dangol_republisher"].submit(door.id)
    if report.erasure_id and settings.mqtt_url:  # the old id's menu: cleared at every store
        try:
            republish_erasures(get_db(), settings)
        except MqttError as exc:
            log.error("menu clear of linked customer %s not yet sent: %s", loyalty_id, exc)
            flash(f"The stores will clear the history record's old menu as soon as the broker answers ({exc}).",
                  "warning")
    return redirect(back)


def daypart_picks(session: Session, customer_id: str) -> list[tuple[str, list[dict]]]:
    """The customer's picks per day-part as training wrote them (:class:`MenuDayparts`), in day order:
    ``[(day-part name, [{"item_id", "score", "reasons"}, ...]), ...]``; empty when none were written (data
    without known times of day; a customer the model does not know gets their store's cold-start lists per
    day-part)."""
    from dangol_cloud.recommend.dayparts import DAYPARTS

    row = session.get(MenuDayparts, customer_id)
    if row is None:
        return []
    return [(name, row.dayparts.get(name) or []) for name, _, _ in DAYPARTS if row.dayparts.get(name)]
