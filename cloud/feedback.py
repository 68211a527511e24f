"""Recommender feedback: likes/dislikes per customer and item, and "shown pick bought" credits.

* :func:`record_opinions` stores a like or dislike of an item and the products sold as it (the latest one counts;
  ``none`` forgets it); a dislike takes them off the customer's stored menu at once (:func:`drop_disliked_picks`,
  once per request), and :func:`republish_menus` sends that menu to the stores (from a background thread:
  :class:`dangol_cloud.background.MenuRepublisher`).
* :func:`credit_shown_picks` attributes purchase lines to the visit whose screen showed the item: the
  customer's latest visit at most :data:`CREDIT_WINDOW` before the purchase; one purchase line gives at most
  one credit (``pick_credits.purchase_id`` is the primary key), so re-running it never counts twice. A POS
  product's sale counts for the menu item it is sold as (:mod:`dangol_cloud.menu_mapping`, as Analytics counts
  it): the credit names the menu item shown (``pick_credits.item_id``), the purchase the product bought.
* :func:`training_feedback` gives the next training what it uses: per customer the disliked items (never
  offered again), extra positive interactions (a like; a shown pick bought, as the product bought: the
  recommender learns from products) and the picks shown and ignored
  (shown at a visit, not bought within :data:`CREDIT_WINDOW`): soft negatives, which the recommender penalises
  only as much as helps on its validation split (:mod:`dangol_cloud.recommend.stage2`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from dangol_cloud.models import (CatalogueItem, Customer, PickCredit, PickOpinion, ProductMapping, Purchase, Visit,
                                 utcnow)

__all__ = ["CREDIT_WINDOW", "OPINIONS", "TrainingFeedback", "credit_shown_picks", "disliked_items",
           "drop_disliked_picks", "record_opinion", "record_opinions", "republish_menu", "republish_menus",
           "ignored_as_products", "shown_and_ignored", "training_feedback"]

log = logging.getLogger(__name__)

#: A purchase this long after a visit is credited to the picks shown at that visit (a café stay).
CREDIT_WINDOW = timedelta(hours=3)
OPINIONS = ("like", "dislike", "none")


def record_opinion(session: Session, customer_id: str, item_id: str, opinion: str, by: str | None = None) -> None:
    """Store ``opinion`` (``like``, ``dislike``, or ``none`` to forget it) of ``customer_id`` on ``item_id``, in
    the caller's transaction: :func:`record_opinions` with one item.

    Raises:
        ValueError: ``opinion`` is not one of :data:`OPINIONS`.
        LookupError: no such customer or catalogue item (the message names which).
    """
    record_opinions(session, customer_id, [item_id], opinion, by)


def record_opinions(session: Session, customer_id: str, item_ids: Iterable[str], opinion: str,
                    by: str | None = None) -> int:
    """Store the same ``opinion`` (``like``, ``dislike``, or ``none`` to forget it) of ``customer_id`` on each of
    ``item_ids`` (e.g. a menu item and every POS product sold as it), in the caller's transaction, with a few
    queries whatever the number of items. A dislike then takes them off the customer's stored menu, once for all
    of them (:func:`drop_disliked_picks`); the caller commits, then has the menu published
    (:func:`republish_menus`, e.g. through :class:`~dangol_cloud.background.MenuRepublisher`).

    Returns:
        Number of distinct items recorded (or forgotten).

    Raises:
        ValueError: ``opinion`` is not one of :data:`OPINIONS`.
        LookupError: no such customer or catalogue item (the message names which; nothing is recorded).
    """
    if opinion not in OPINIONS:
        raise ValueError(f"opinion {opinion!r}: must be one of {', '.join(OPINIONS)}")
    if session.get(Customer, customer_id) is None:
        raise LookupError(f"customer {customer_id!r}: no such customer")
    ids = list(dict.fromkeys(str(i) for i in item_ids))
    known: set[str] = set()
    rows: dict[str, PickOpinion] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        known.update(session.scalars(select(CatalogueItem.id).where(CatalogueItem.id.in_(chunk))))
        rows.update((r.item_id, r) for r in session.scalars(select(PickOpinion).where(
            PickOpinion.customer_id == customer_id, PickOpinion.item_id.in_(chunk))))
    missing = [i for i in ids if i not in known]
    if missing:
        raise LookupError(f"item {missing[0]!r}: no such catalogue item")
    now = utcnow()
    for item_id in ids:
        row = rows.get(item_id)
        if opinion == "none":
            if row is not None:
                session.delete(row)
            continue
        if row is None:
            row = PickOpinion(customer_id=customer_id, item_id=item_id)
            session.add(row)
        row.opinion, row.at, row.by = opinion, now, by
    if opinion == "dislike" and ids:
        session.flush()
        drop_disliked_picks(session, customer_id)
    return len(ids)


def disliked_items(session: Session, customer_ids: list[str] | None = None) -> dict[str, set[str]]:
    """``{customer id: {item ids the customer disliked}}`` as recorded (menu items or products), for
    ``customer_ids`` (default: every customer with a dislike)."""
    query = select(PickOpinion.customer_id, PickOpinion.item_id).where(PickOpinion.opinion == "dislike")
    chunks = [None] if customer_ids is None else [customer_ids[k:k + 500] for k in range(0, len(customer_ids), 500)]
    out: dict[str, set[str]] = {}
    for chunk in chunks:
        for customer, item in session.execute(query if chunk is None else
                                              query.where(PickOpinion.customer_id.in_(chunk))):
            out.setdefault(customer, set()).add(item)
    return out


def drop_disliked_picks(session: Session, customer_id: str) -> int:
    """Remove from the customer's stored :class:`~dangol_cloud.models.Menu` and day-part rows every pick their
    dislikes rule out under the current product mapping (:func:`dangol_cloud.menu_mapping.ruled_out`: the
    disliked item, the menu item a disliked product is sold as, and every product sold as either), in the
    caller's transaction. The freed places are filled at the next training.

    Returns:
        Number of picks removed (all-day and day-part picks together).
    """
    from dangol_cloud.menu_mapping import menu_item_map, ruled_out
    from dangol_cloud.models import Menu, MenuDayparts

    disliked = disliked_items(session, [customer_id]).get(customer_id)
    menu, parts = session.get(Menu, customer_id), session.get(MenuDayparts, customer_id)
    if not disliked or (menu is None and parts is None):
        return 0
    lists = ([menu.picks] if menu is not None else []) + list((parts.dayparts or {}).values() if parts else [])
    mapping = menu_item_map(session, {str(p["item_id"]) for picks in lists for p in picks} | disliked)
    banned = ruled_out(disliked, mapping)

    def kept(picks: list[dict]) -> list[dict]:
        return [p for p in picks
                if p["item_id"] not in banned and mapping.get(p["item_id"], p["item_id"]) not in banned]

    removed = 0
    if menu is not None:
        new = kept(menu.picks)
        removed += len(menu.picks) - len(new)
        if len(new) != len(menu.picks):
            menu.picks = new
    if parts is not None and parts.dayparts:
        new_parts = {name: kept(picks) for name, picks in parts.dayparts.items()}
        dropped = sum(len(parts.dayparts[n]) - len(v) for n, v in new_parts.items())
        if dropped:
            parts.dayparts, removed = new_parts, removed + dropped
    if removed:
        log.info("took %d disliked pick(s) off the stored menu of %s", removed, customer_id)
    return removed


def republish_menu(db, settings, customer_id: str) -> int:
    """:func:`republish_menus` for one customer."""
    return republish_menus(db, settings, [customer_id])


def republish_menus(db, settings, customer_ids: list[str]) -> int:
    """With a broker (``settings.mqtt_url``), publish these customers' stored menus to the stores now (``menu/1``,
    retained; :func:`dangol_cloud.publishing.publish` with those customers only, no catalogue), e.g. after a
    dislike took a pick off them. It blocks while the broker does not answer (up to its timeouts): call it from
    a background thread (:class:`~dangol_cloud.background.MenuRepublisher`), never from a web request. The
    opinions are committed before: a failed publish loses nothing, the menus go out with the next publish.

    Returns:
        Number of menu messages published (0 without a broker, or for customers without a menu or consent).

    Raises:
        MqttError: the broker is unreachable or does not acknowledge.
    """
    from dangol_cloud.publishing import publish

    if not settings.mqtt_url or not customer_ids:
        return 0
    with db.transaction() as session:
        return publish(session, settings.mqtt_url, currency=settings.currency, catalogue=False,
                       customer_ids=list(customer_ids)).menus


def credit_shown_picks(session: Session, window: timedelta = CREDIT_WINDOW) -> int:
    """Credit every not yet credited purchase line of an item shown at the customer's latest visit at most
    ``window`` before it (the visit's ``shown_items``, best first). Returns the number of new credits.

    A line of a POS product counts for the menu item it is sold as under the current mapping
    (``coalesce(menu_item_id, item_id)``, as :func:`dangol_cloud.analytics.compute` translates it); a product
    shown as itself (an unmapped product's pick, shown before the owner mapped it) counts as itself. The
    credit's ``item_id`` is the item shown, so a later re-mapping does not move it.

    Only purchases from the first visit with shown items on are looked at (imported history predates them).
    """
    first = session.scalar(select(func.min(Visit.ts)).where(Visit.customer_id.is_not(None)))
    if first is None:
        return 0
    visits = pd.DataFrame(session.execute(
        select(Visit.id, Visit.customer_id, Visit.ts, Visit.shown_items).where(Visit.customer_id.is_not(None))
    ).all(), columns=["visit_id", "customer_id", "ts", "shown"])
    credited = select(PickCredit.purchase_id)
    menu_item = func.coalesce(ProductMapping.menu_item_id, Purchase.item_id)  # as Analytics translates a sale
    purchases = pd.DataFrame(session.execute(
        select(Purchase.id, Purchase.customer_id, Purchase.item_id, menu_item, Purchase.ts)
        .outerjoin(ProductMapping, ProductMapping.product_id == Purchase.item_id)
        .where(Purchase.ts >= first, Purchase.id.not_in(credited))
    ).all(), columns=["purchase_id", "customer_id", "product", "menu_item", "ts"])
    if purchases.empty or visits.empty:
        return 0
    for frame in (visits, purchases):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    matched = pd.merge_asof(purchases.sort_values("ts"), visits.sort_values("ts"), on="ts", by="customer_id",
                            direction="backward", tolerance=pd.Timedelta(window))
    rows = []
    for rec in matched.dropna(subset=["visit_id"]).itertuples(index=False):
        shown = [str(x) for x in (rec.shown or [])]
        # the menu item the product is sold as; else the product itself, if a screen showed it as such
        item = rec.menu_item if rec.menu_item in shown else rec.product if rec.product in shown else None
        if item is not None:
            rows.append({"purchase_id": int(rec.purchase_id), "visit_id": int(rec.visit_id),
                         "customer_id": rec.customer_id, "item_id": item,
                         "shown_rank": shown.index(item), "at": rec.ts.to_pydatetime()})
    if rows:
        session.execute(insert(PickCredit), rows)
    log.info("credited %d shown picks bought", len(rows))
    return len(rows)


@dataclass
class TrainingFeedback:
    """What the next training uses.

    Attributes:
        dislikes: ``{customer_id: {item_id, ...}}`` as recorded (menu items or products), never offered to that
            customer again: training expands them through the current mapping
            (:func:`dangol_cloud.menu_mapping.expand_dislikes`).
        positives: extra interaction rows (``customer``, ``item``, ``ts`` naive UTC, ``quantity`` 1.0,
            ``store`` ""): one per like (at its time, local) and one per shown pick bought (at the purchase time,
            as the product bought, not the menu item credited), so a credited purchase counts twice.
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
    item (a credit names the item shown, so a menu item bought as a product sold as it is no such row), for visits
    older than ``window`` (a later purchase could still be credited to a younger one). Call it after
    :func:`credit_shown_picks`."""
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
    # a credit names the menu item shown; the recommender learns from the product bought (its purchases' item)
    rows += session.execute(select(PickCredit.customer_id, Purchase.item_id, PickCredit.at)
                            .join(Purchase, Purchase.id == PickCredit.purchase_id)).all()
    positives = pd.DataFrame(rows, columns=["customer", "item", "ts"])
    local = pd.to_datetime(positives["ts"], utc=True).dt.tz_convert(ZoneInfo(tz)).dt.tz_localize(None)
    positives["ts"] = local.astype("datetime64[ns]")
    positives["quantity"] = 1.0
    positives["store"] = ""
    return TrainingFeedback(dislikes, positives, shown_and_ignored(session, tz))


def ignored_as_products(ignored: pd.DataFrame, mapping: Mapping[str, str | None], bought: pd.DataFrame
                        ) -> pd.DataFrame:
    """Shown-and-ignored rows as the recommender needs them: the door shows menu items, the recommender picks POS
    products, so a row naming a menu item is repeated for each product sold as it under ``mapping``
    (:func:`dangol_cloud.menu_mapping.menu_item_map`, ``{product: menu item or None}``) that the customer has
    bought (``bought``): those are the products the recommender offers them again; the soft negative never
    reaches the products of a menu item they never had (a menu item of a whole category may be sold as hundreds,
    and the rows would multiply). The row itself is kept (a product shown as itself, or a menu item that is its
    own product).

    Args:
        ignored: ``customer``, ``item``, ``ts`` (:func:`shown_and_ignored`).
        mapping: ``{product id: menu item id or None}``.
        bought: ``customer``, ``item`` (product) of the purchase lines (duplicates allowed).

    Returns:
        The columns of ``ignored``: its rows, then one per (row, product of its menu item the customer bought).
    """
    links = pd.DataFrame([(p, i) for p, i in mapping.items() if i is not None and p != i],
                         columns=["product", "menu_item"])
    if ignored.empty or links.empty:
        return ignored
    owned = (bought[["customer", "item"]].drop_duplicates().rename(columns={"item": "product"})
             .merge(links, on="product"))                                   # customer, product, menu_item
    extra = ignored.merge(owned, left_on=["customer", "item"], right_on=["customer", "menu_item"])
    extra = extra.assign(item=extra["product"])[list(ignored.columns)]
    return pd.concat([ignored, extra], ignore_index=True)
