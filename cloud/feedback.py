"""Recommender feedback: likes/dislikes per customer and item, and "shown pick bought" credits.

* :func:`record_opinion` stores a like or dislike (the latest one counts; ``none`` forgets it).
* :func:`credit_shown_picks` attributes purchase lines to the visit whose screen showed the item: the
  customer's latest visit at most :data:`CREDIT_WINDOW` before the purchase; one purchase line gives at most
  one credit (``pick_credits.purchase_id`` is the primary key), so re-running it never counts twice.
* :func:`training_feedback` gives the next training what it uses: per customer the disliked items (never
  offered again), extra positive interactions (a like, a shown pick bought) and the picks shown and ignored
  (shown at a visit, not bought within :data:`CREDIT_WINDOW`): soft negatives, which the recommender penalises
  only as much as helps on its validation split (:mod:`dangol_cloud.recommend.stage2`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from dangol_cloud.models import CatalogueItem, Customer, PickCredit, PickOpinion, Purchase, Visit, utcnow

__all__ = ["CREDIT_WINDOW", "OPINIONS", "TrainingFeedback", "credit_shown_picks", "record_opinion",
           "shown_and_ignored", "training_feedback"]

log = logging.getLogger(__name__)

#: A purchase this long after a visit is credited to the picks shown at that visit (a café stay).
CREDIT_WINDOW = timedelta(hours=3)
OPINIONS = ("like", "dislike", "none")


def record_opinion(session: Session, customer_id: str, item_id: str, opinion: str, by: str | None = None) -> None:
    """Store ``opinion`` (``like``, ``dislike``, or ``none`` to forget it) of ``customer_id`` on ``item_id``.

    Raises:
        ValueError: ``opinion`` is not one of :data:`OPINIONS`.
        LookupError: no such customer or catalogue item (the message names which).
    """
    if opinion not in OPINIONS:
        raise ValueError(f"opinion {opinion!r}: must be one of {', '.join(OPINIONS)}")
    if session.get(Customer, customer_id) is None:
        raise LookupError(f"customer {customer_id!r}: no such customer")
    if session.get(CatalogueItem, item_id) is None:
        raise LookupError(f"item {item_id!r}: no such catalogue item")
    row = session.get(PickOpinion, (customer_id, item_id))
    if opinion == "none":
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = PickOpinion(customer_id=customer_id, item_id=item_id)
        session.add(row)
    row.opinion, row.at, row.by = opinion, utcnow(), by


def credit_shown_picks(session: Session, window: timedelta = CREDIT_WINDOW) -> int:
    """Credit every not yet credited purchase line of an item shown at the customer's latest visit at most
    ``window`` before it (the visit's ``shown_items``, best first). Returns the number of new credits.

    Only purchases from the first visit with shown items on are looked at (imported history predates them).
    """
    first = session.scalar(select(func.min(Visit.ts)).where(Visit.customer_id.is_not(None)))
    if first is None:
        return 0
    visits = pd.DataFrame(session.execute(
        select(Visit.id, Visit.customer_id, Visit.ts, Visit.shown_items).where(Visit.customer_id.is_not(None))
    ).all(), columns=["visit_id", "customer_id", "ts", "shown"])
    credited = select(PickCredit.purchase_id)
    purchases = pd.DataFrame(session.execute(
        select(Purchase.id, Purchase.customer_id, Purchase.item_id, Purchase.ts)
        .where(Purchase.ts >= first, Purchase.id.not_in(credited))
    ).all(), columns=["purchase_id", "customer_id", "item_id", "ts"])
    if purchases.empty or visits.empty:
        return 0
    for frame in (visits, purchases):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    matched = pd.merge_asof(purchases.sort_values("ts"), visits.sort_values("ts"), on="ts", by="customer_id",
                            direction="backward", tolerance=pd.Timedelta(window))
    rows = []
    for rec in matched.dropna(subset=["visit_id"]).itertuples(index=False):
        shown = [str(x) for x in (rec.shown or [])]
        if rec.item_id in shown:
            rows.append({"purchase_id": int(rec.purchase_id), "visit_id": int(rec.visit_id),
                         "customer_id": rec.customer_id, "item_id": rec.item_id,
                         "shown_rank": shown.index(rec.item_id), "at": rec.ts.to_pydatetime()})
    if rows:
        session.execute(insert(PickCredit), rows)
    log.info("credited %d shown picks bought", len(rows))
    return len(rows)


@dataclass
class TrainingFeedback:
    """What the next training uses.

    Attributes:
        dislikes: ``{customer_id: {item_id, ...}}``, never offered to that customer again.
        positives: extra interaction rows (``customer``, ``item``, ``ts`` naive UTC, ``quantity`` 1.0,
            ``store`` ""): one per like (at its time, local) and one per shown pick bought (at the purchase time),
            so a credited purchase counts twice.
        ignored: shown-and-ignored picks (``customer``, ``item``, ``ts`` naive local time of the visit): one row
            per item shown at a visit of a known customer that got no credit from that visit, for visits at least
            ``window`` old (so the outcome is known).
    """

    dislikes: dict[str, set[str]] = field(default_factory=dict)
    positives: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["customer", "item", "ts", "quantity", "store"]))
    ignored: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["customer", "item", "ts"]))


def _local(ts: pd.Series, tz: str) -> pd.Series:
    return pd.to_datetime(ts, utc=True).dt.tz_convert(ZoneInfo(tz)).dt.tz_localize(None).astype("datetime64[ns]")


def shown_and_ignored(session: Session, tz: str = "UTC", window: timedelta = CREDIT_WINDOW) -> pd.DataFrame:
    """Picks shown at a known customer's visit and not bought from it: ``customer``, ``item``, ``ts`` (the visit,
    naive local time in ``tz``), one row per (visit, shown item) without a :class:`PickCredit` of that visit and
    item, for visits older than ``window`` (a later purchase could still be credited to a younger one).
    Call it after :func:`credit_shown_picks`."""
    cutoff = utcnow() - window
    visits = session.execute(select(Visit.id, Visit.customer_id, Visit.ts, Visit.shown_items)
                             .where(Visit.customer_id.is_not(None), Visit.ts <= cutoff)).all()
    credited = set(session.execute(select(PickCredit.visit_id, PickCredit.item_id)).all())
    rows = [(customer, str(item), ts) for visit_id, customer, ts, shown in visits
            for item in dict.fromkeys(shown or []) if (visit_id, str(item)) not in credited]
    frame = pd.DataFrame(rows, columns=["customer", "item", "ts"])
    frame["ts"] = _local(frame["ts"], tz)
    return frame


def training_feedback(session: Session, tz: str = "UTC") -> TrainingFeedback:
    """Read the opinions, credits and shown-and-ignored picks for a training run (see :class:`TrainingFeedback`);
    times are converted to naive local time in ``tz``, as :func:`dangol_cloud.training.load_frames` does."""
    opinions = session.execute(select(PickOpinion.customer_id, PickOpinion.item_id, PickOpinion.opinion,
                                      PickOpinion.at)).all()
    dislikes: dict[str, set[str]] = {}
    rows = []
    for customer, item, opinion, at in opinions:
        if opinion == "dislike":
            dislikes.setdefault(customer, set()).add(item)
        else:
            rows.append((customer, item, at))
    rows += session.execute(select(PickCredit.customer_id, PickCredit.item_id, PickCredit.at)).all()
    positives = pd.DataFrame(rows, columns=["customer", "item", "ts"])
    local = pd.to_datetime(positives["ts"], utc=True).dt.tz_convert(ZoneInfo(tz)).dt.tz_localize(None)
    positives["ts"] = local.astype("datetime64[ns]")
    positives["quantity"] = 1.0
    positives["store"] = ""
    return TrainingFeedback(dislikes, positives, shown_and_ignored(session, tz))
