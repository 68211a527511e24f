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
before the retention period of its run (``Erasure.kept_before``, which :func:`dangol_cloud.erasure.run_retention`
sets to its time minus ``RETENTION_DAYS``; a retention erasure made before revision 0012 has none: the erasure's own
time). A sale the customer made within that period, in a shop export not imported when they were
erased (a regular last seen 13 months ago who bought yesterday), is imported, as a new customer; their old history
stays erased, also a sale between their last visit and the start of that period, from before the retention period.
An erased customer's Dangol id named as the customer (an export of Dangol's own ids) is refused the same way, from
the ``erasures`` table (a customer whose consent was withdrawn still exists and is not refused).

The owner allows an erased loyalty id again when the customer re-joins, on the Privacy page (:func:`lift_erased_ref`,
audited ``erasure-lifted``, no loyalty id in the log): the row stays, with ``allowed_from`` the time of that click,
and only the loyalty id's sales from then on are imported and recorded (as a new customer); the erased sales, and any
made between the erasure and the click, stay out, whatever export is uploaded later. Erasures made before revision
0011 kept nothing (their loyalty ids were deleted) and cannot be suppressed; ids allowed again before revision 0012
were deleted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dangol_cloud.crypto import keyring_of
from dangol_cloud.models import Erasure, ErasedRef, utcnow

__all__ = ["Erased", "ErasedRefs", "allowed_again_count", "erased_for", "erased_ref_count", "find_erased_ref",
           "lift_erased_ref", "remember_erased_ref"]

@dataclass(frozen=True)
class Erased:
    """An erasure that keeps a customer reference out.

    Attributes:
        at: when the customer was erased (aware UTC).
        retention: erased by the retention rule, not at a request.
        allowed_from: sales at or after this time (aware UTC) come in; None: every sale stays out (a requested
            erasure not allowed again). A retention erasure's is the start of its run's retention period
            (``Erasure.kept_before``, else ``at``); a loyalty id allowed again, the earlier of that and the time it
            was allowed again.
        allowed_again: when the owner allowed the loyalty id again (:func:`lift_erased_ref`), else None.
    """

    at: datetime
    retention: bool
    allowed_from: datetime | None = None
    allowed_again: datetime | None = None

    @classmethod
    def of(cls, at: datetime, retention: bool, *, kept_before: datetime | None = None,
           allowed_again: datetime | None = None) -> Erased:
        """The erasure at ``at``; ``kept_before``: a retention erasure's start of the retention period
        (``Erasure.kept_before``; None: unknown, ``at`` is the cut-off); ``allowed_again``: when the loyalty id was
        allowed again, or None."""
        bounds = [kept_before or at] if retention else []
        bounds += [allowed_again] if allowed_again is not None else []
        return cls(at, retention, min(bounds) if bounds else None, allowed_again)

    def covers(self, ts: datetime) -> bool:
        """True if a sale at ``ts`` (aware) stays out: every sale after a requested erasure not allowed again, else
        the sales before :attr:`allowed_from`."""
        return self.allowed_from is None or ts < self.allowed_from

    def import_error(self, ref: str) -> str:
        """The row error of an imported line naming the erased customer ``ref``."""
        if self.allowed_from is None:
            return f"customer {ref!r} erased on {self.at:%Y-%m-%d}; not imported"
        if self.allowed_again is not None and self.allowed_from == self.allowed_again:
            return (f"customer {ref!r} erased on {self.at:%Y-%m-%d}, allowed again on {self.allowed_again:%Y-%m-%d}; "
                    "sales from before then are not imported")
        return (f"customer {ref!r} erased on {self.at:%Y-%m-%d} (retention); sales from before "
                f"{self.allowed_from:%Y-%m-%d} are not imported")


def remember_erased_ref(session: Session, *, ref: str | None, ref_hash: str | None, customer_id: str,
                        erasure: Erasure, retention: bool) -> None:
    """Keep the loyalty id ``ref`` of the customer ``customer_id`` that ``erasure`` erased (nothing without one); a
    loyalty id erased before (allowed again, or by retention, then back) takes this erasure's date and kind and is
    no longer allowed again."""
    if ref is None:
        return
    ref_hash = ref_hash or keyring_of(session.get_bind().dialect).lookup_hash(ref)
    row = session.scalar(select(ErasedRef).where(ErasedRef.ref_hash == ref_hash))
    if row is None:
        row = ErasedRef(ref_hash=ref_hash)
        session.add(row)
    row.ref, row.customer_id, row.erasure_id = ref, customer_id, erasure.id
    row.erased_at, row.retention, row.allowed_from = erasure.requested_at or utcnow(), retention, None


class ErasedRefs:
    """The erased loyalty ids and customer ids, read once for an import (:meth:`read`; constructed empty).

    Args:
        refs: ``{keyed hash of an erased loyalty id: its erasure}``.
        ids: ``{erased customer id: its erasure}``."""

    def __init__(self, refs: dict[str, Erased] | None = None, ids: dict[str, Erased] | None = None) -> None:
        self.refs: dict[str, Erased] = refs if refs is not None else {}
        self.ids: dict[str, Erased] = ids if ids is not None else {}

    @classmethod
    def read(cls, session: Session) -> "ErasedRefs":
        """Every erased ref and customer id. A database that never erased anyone reads nothing more: an import
        there costs one query (and also works on a schema older than revision 0012, which tests of the older
        migrations import into)."""
        self = cls()
        if session.scalar(select(Erasure.id).limit(1)) is None:
            return self
        for ref_hash, at, retention, allowed, kept_before in session.execute(select(
                ErasedRef.ref_hash, ErasedRef.erased_at, ErasedRef.retention, ErasedRef.allowed_from,
                Erasure.kept_before).outerjoin(Erasure, Erasure.id == ErasedRef.erasure_id)):
            self.refs[ref_hash] = Erased.of(at, retention, kept_before=kept_before, allowed_again=allowed)
        for customer_id, at, by, kept_before in session.execute(select(
                Erasure.customer_id, Erasure.requested_at, Erasure.requested_by, Erasure.kept_before)
                .order_by(Erasure.requested_at)):
            self.ids[customer_id] = Erased.of(at, by == "retention", kept_before=kept_before)
        return self

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
    """:meth:`ErasedRefs.find` for one sale (the POS API): indexed look-ups instead of loading every erasure.
    ``ref`` is taken without surrounding blanks (``"1042 "`` is the erased ``"1042"``), as the importers and
    :func:`find_erased_ref` take it."""
    ref = ref.strip()
    ref_hash = keyring_of(session.get_bind().dialect).lookup_hash(ref)
    row = session.execute(select(ErasedRef.erased_at, ErasedRef.retention, ErasedRef.allowed_from, Erasure.kept_before)
                          .outerjoin(Erasure, Erasure.id == ErasedRef.erasure_id)
                          .where(ErasedRef.ref_hash == ref_hash)).first()
    found = None
    if row is not None:
        found = Erased.of(row.erased_at, row.retention, kept_before=row.kept_before, allowed_again=row.allowed_from)
    if found is None and not existing_id:
        erasure = session.execute(select(Erasure.requested_at, Erasure.requested_by, Erasure.kept_before)
                                  .where(Erasure.customer_id == ref)
                                  .order_by(Erasure.requested_at.desc()).limit(1)).first()
        if erasure is not None:
            found = Erased.of(erasure.requested_at, erasure.requested_by == "retention",
                              kept_before=erasure.kept_before)
    return found if found is not None and found.covers(ts) else None


def erased_ref_count(session: Session) -> int:
    """How many erased loyalty ids are kept out, wholly or their older sales (shown on the Privacy page)."""
    return session.scalar(select(func.count()).select_from(ErasedRef))


def allowed_again_count(session: Session) -> int:
    """How many of them the owner allowed again (only their sales from before then are kept out)."""
    return session.scalar(select(func.count()).select_from(ErasedRef).where(ErasedRef.allowed_from.is_not(None)))


def find_erased_ref(session: Session, ref: str) -> ErasedRef | None:
    """The row of the erased loyalty id ``ref`` (surrounding blanks ignored), found by its keyed hash, or None."""
    ref_hash = keyring_of(session.get_bind().dialect).lookup_hash(ref.strip())
    return session.scalar(select(ErasedRef).where(ErasedRef.ref_hash == ref_hash))


def lift_erased_ref(session: Session, ref: str, *, actor: str) -> ErasedRef | None:
    """Allow the erased loyalty id ``ref`` again (the customer re-joined): its sales from now on are imported and
    recorded (as a new customer), while the older ones stay out — the row stays, ``allowed_from`` set to now — and
    the lift is audited (``erasure-lifted``: the erased customer's id and erasure, never the loyalty id). A loyalty
    id allowed again already is left as it is (its cut-off does not move, nothing is audited). The caller commits.

    Returns:
        The row (``allowed_from``: since when its sales are recorded), or None when ``ref`` (surrounding blanks
        ignored) is no erased loyalty id.
    """
    from dangol_cloud.erasure import audit

    row = find_erased_ref(session, ref)
    if row is None or row.allowed_from is not None:
        return row
    row.allowed_from = utcnow()
    audit(session, actor, "erasure-lifted", customer_id=row.customer_id, erasure_id=row.erasure_id,
          detail=f"the loyalty number of the customer erased on {row.erased_at:%Y-%m-%d} is allowed again: its sales "
                 "from now on are imported and recorded, the older ones stay out")
    return row
