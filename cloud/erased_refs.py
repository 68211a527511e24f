"""Erased loyalty ids: what keeps an erased customer from coming back through the shop's own data.

Erasing a customer deletes their row, loyalty id (``external_ref``) included, but the shop's POS still knows
the loyalty id: a cumulative export uploaded again, or the POS API's next sale, would recreate the customer with
their whole history. So :func:`dangol_cloud.erasure.erase_customer` keeps the loyalty id in ``erased_refs``
(:class:`~dangol_cloud.models.ErasedRef`): its keyed hash, what is looked up, and the id as AES-GCM ciphertext,
only so that ``rotate-key`` can recompute the hash under a new key. Then

* an import skips every row naming it, each a counted row error ``customer 'REF' erased on DATE; not imported``
  (:class:`ErasedRefs`, used by :mod:`dangol_cloud.ingest`), and
* the POS API refuses a sale naming it with 422 "Customer erased", nothing stored (:func:`erased_for`).

An erasure by the retention rule (not seen for ``RETENTION_DAYS``; nobody asked) keeps out only the sales from
before it: a regular who comes back after a year is a new customer, and their old history stays erased. An
erased customer's Dangol id named as the customer (an export of Dangol's own ids) is refused the same way, from
the ``erasures`` table (a customer whose consent was withdrawn still exists and is not refused).

The owner lifts a suppression when the customer re-joins, on the Privacy page (:func:`lift_erased_ref`, audited
``erasure-lifted``, no loyalty id in the log): the loyalty id's sales are imported and recorded again from then on.
Erasures made before revision 0011 kept nothing (their loyalty ids were deleted) and cannot be suppressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dangol_cloud.crypto import keyring_of
from dangol_cloud.models import Erasure, ErasedRef, utcnow

__all__ = ["Erased", "ErasedRefs", "erased_for", "erased_ref_count", "lift_erased_ref", "remember_erased_ref"]


@dataclass(frozen=True)
class Erased:
    """An erasure that keeps a customer reference out: when, and whether by the retention rule."""

    at: datetime
    retention: bool

    def covers(self, ts: datetime) -> bool:
        """True if a sale at ``ts`` stays out: every sale after a requested erasure, older ones after retention."""
        return not self.retention or ts < self.at

    def import_error(self, ref: str) -> str:
        """The row error of an imported line naming the erased customer ``ref``."""
        if self.retention:
            return (f"customer {ref!r} erased on {self.at:%Y-%m-%d} (retention); sales from before then are not "
                    "imported")
        return f"customer {ref!r} erased on {self.at:%Y-%m-%d}; not imported"


def remember_erased_ref(session: Session, *, ref: str | None, ref_hash: str | None, customer_id: str,
                        erasure: Erasure, retention: bool) -> None:
    """Keep the loyalty id ``ref`` of the customer ``customer_id`` that ``erasure`` erased (nothing without one); a
    loyalty id erased before (lifted, or by retention, then back) takes this erasure's date and kind."""
    if ref is None:
        return
    ref_hash = ref_hash or keyring_of(session.get_bind().dialect).lookup_hash(ref)
    row = session.scalar(select(ErasedRef).where(ErasedRef.ref_hash == ref_hash))
    if row is None:
        row = ErasedRef(ref_hash=ref_hash)
        session.add(row)
    row.ref, row.customer_id, row.erasure_id = ref, customer_id, erasure.id
    row.erased_at, row.retention = erasure.requested_at or utcnow(), retention


class ErasedRefs:
    """The erased loyalty ids and customer ids, read once for an import.

    A database that never erased anyone reads nothing more: an import there costs one query (and also works on a
    schema older than revision 0011, which tests of the older migrations import into)."""

    def __init__(self, session: Session) -> None:
        self.refs: dict[str, Erased] = {}
        self.ids: dict[str, Erased] = {}
        if session.scalar(select(Erasure.id).limit(1)) is None:
            return
        for ref_hash, at, retention in session.execute(select(ErasedRef.ref_hash, ErasedRef.erased_at,
                                                              ErasedRef.retention)):
            self.refs[ref_hash] = Erased(at, retention)
        for customer_id, at, by in session.execute(select(Erasure.customer_id, Erasure.requested_at,
                                                          Erasure.requested_by).order_by(Erasure.requested_at)):
            self.ids[customer_id] = Erased(at, by == "retention")

    def __bool__(self) -> bool:
        return bool(self.refs or self.ids)

    def find(self, ref: str, ref_hash: str, ts: datetime, *, existing_id: bool) -> Erased | None:
        """The erasure keeping out a sale at ``ts`` naming ``ref`` (keyed hash ``ref_hash``), else None.
        ``existing_id``: ``ref`` is the id of a customer who exists (never refused as an erased id)."""
        found = self.refs.get(ref_hash)
        if found is None and not existing_id:
            found = self.ids.get(ref)
        return found if found is not None and found.covers(ts) else None


def erased_for(session: Session, ref: str, ts: datetime, *, existing_id: bool) -> Erased | None:
    """:meth:`ErasedRefs.find` for one sale (the POS API): two indexed look-ups instead of loading every erasure."""
    ref_hash = keyring_of(session.get_bind().dialect).lookup_hash(ref)
    row = session.execute(select(ErasedRef.erased_at, ErasedRef.retention)
                          .where(ErasedRef.ref_hash == ref_hash)).first()
    found = Erased(row.erased_at, row.retention) if row is not None else None
    if found is None and not existing_id:
        erasure = session.execute(select(Erasure.requested_at, Erasure.requested_by).where(Erasure.customer_id == ref)
                                  .order_by(Erasure.requested_at.desc()).limit(1)).first()
        if erasure is not None:
            found = Erased(erasure.requested_at, erasure.requested_by == "retention")
    return found if found is not None and found.covers(ts) else None


def erased_ref_count(session: Session) -> int:
    """How many erased loyalty ids are kept out (shown on the Privacy page)."""
    return session.scalar(select(func.count()).select_from(ErasedRef))


def lift_erased_ref(session: Session, ref: str, *, actor: str) -> ErasedRef | None:
    """Let the erased loyalty id ``ref`` be imported and recorded again (the customer re-joined): its row is
    deleted and the lift audited (``erasure-lifted``: the erased customer's id and erasure, never the loyalty id).
    The caller commits.

    Returns:
        The deleted row, or None when ``ref`` (surrounding blanks ignored) is no erased loyalty id.
    """
    from dangol_cloud.erasure import audit

    ref_hash = keyring_of(session.get_bind().dialect).lookup_hash(ref.strip())
    row = session.scalar(select(ErasedRef).where(ErasedRef.ref_hash == ref_hash))
    if row is None:
        return None
    session.delete(row)
    audit(session, actor, "erasure-lifted", customer_id=row.customer_id, erasure_id=row.erasure_id,
          detail=f"the loyalty number of the customer erased on {row.erased_at:%Y-%m-%d} may be imported and "
                 "recorded again")
    return row
