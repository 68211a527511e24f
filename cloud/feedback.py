"""Recommender feedback: likes/dislikes per customer and item, and "shown pick bought" credits.

* :func:`record_opinions` stores a like or dislike of the item named (the menu item the dashboard showed, or the
  item the store API sent; never copied onto the POS products sold as it: a dislike is expanded through the
  current mapping where it is used, :func:`dangol_cloud.menu_mapping.expand_dislikes`); the latest one counts,
  ``none`` forgets it, and ``like``/``none`` also clear every dislike that rules the item out. A dislike takes
  the item off the customer's stored menu at once (:func:`drop_disliked_picks`, once per request), and
  :func:`republish_menus` sends that menu to the stores (from a background thread:
  :class:`dangol_cloud.background.MenuRepublisher`).
* :func:`credit_shown_picks` and :func:`shown_and_ignored` (:mod:`dangol_cloud.feedback_credit`) attribute a
  purchase line to the latest visit at most :data:`CREDIT_WINDOW` before it whose screen showed the item, and give
  the showings no purchase followed. A POS product's sale counts for the menu item it is sold as
  (:mod:`dangol_cloud.menu_mapping`, as Analytics counts it): the credit names the menu item shown
  (``pick_credits.item_id``), the purchase the product bought.
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

import pandas as pd
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dangol_cloud.db import dialect_insert
from dangol_cloud.feedback_credit import (CREDIT_WINDOW, clock_known, credit_shown_picks, local_naive,
                                          shown_and_ignored, stores_without_clock)
from dangol_cloud.models import CatalogueItem, Customer, PickCredit, PickOpinion, Purchase, utcnow

__all__ = ["CREDIT_WINDOW", "OPINIONS", "TrainingFeedback", "clock_known", "credit_shown_picks", "disliked_items",
           "dislikes_ruling_out", "drop_disliked_picks", "record_opinion", "record_opinions", "republish_menu",
           "republish_menus", "ignored_as_products", "shown_and_ignored", "stores_without_clock",
           "training_feedback"]

log = logging.getLogger(__name__)

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
    ``item_ids``, in the caller's transaction, with a few queries whatever the number of items.

    The opinion is stored on what was named (the menu item the dashboard showed, or the item the store API sent),
    never copied onto the POS products sold as it: training and publishing expand a dislike through the *current*
    mapping (:func:`dangol_cloud.menu_mapping.ruled_out`, :func:`~dangol_cloud.menu_mapping.expand_dislikes`), so
    a product re-mapped later follows its new menu item and one like is one training row. ``like`` and ``none``
    first delete every dislike of this customer that rules the item out now (:func:`dislikes_ruling_out`: a
    dislike of a product sold as it, of the menu item it is sold as, or of another product of that menu item), so
    the item is offered again. A dislike takes the items off the customer's stored menu, once for all of them
    (:func:`drop_disliked_picks`); the caller commits, then has the menu published (:func:`republish_menus`, e.g.
    through :class:`~dangol_cloud.background.MenuRepublisher`).

    Each row is written with ``INSERT … ON CONFLICT (customer_id, item_id) DO UPDATE`` (:func:`_upsert_opinions`),
    so the same opinion recorded twice at once (a double tap, a retry while the first request runs) is stored once,
    and the transaction that commits last has its opinion kept.

    Returns:
        Number of distinct items named (recorded or forgotten).

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
    for start in range(0, len(ids), 500):
        known.update(session.scalars(select(CatalogueItem.id).where(CatalogueItem.id.in_(ids[start:start + 500]))))
    missing = [i for i in ids if i not in known]
    if missing:
        raise LookupError(f"item {missing[0]!r}: no such catalogue item")
    named = set(ids)
    if opinion != "dislike":  # the named items' own rows are written or deleted below
        for row in dislikes_ruling_out(session, customer_id, ids):
            if row.item_id not in named:
                session.delete(row)
        session.flush()
    now = utcnow()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        if opinion == "none":
            session.execute(delete(PickOpinion).where(PickOpinion.customer_id == customer_id,
                                                      PickOpinion.item_id.in_(chunk)))
        else:
            session.execute(_upsert_opinions(session, [{"customer_id": customer_id, "item_id": item_id,
                                                        "opinion": opinion, "at": now, "by": by}
                                                       for item_id in chunk]))
    for row in session.identity_map.values():  # rows read earlier in the caller's session: read them again
        if isinstance(row, PickOpinion) and row.customer_id == customer_id and row.item_id in named:
            session.expire(row)
    if opinion == "dislike" and ids:
        drop_disliked_picks(session, customer_id)
    return len(ids)


def _upsert_opinions(session: Session, values: list[dict]):
    """``INSERT`` of the ``pick_opinions`` rows ``values`` that overwrites (``ON CONFLICT (customer_id, item_id) DO
    UPDATE``) the opinion, time and author of a row already there, in the session's dialect (SQLite or PostgreSQL):
    two requests recording the same opinion at once both succeed, the later one's row stays."""
    statement = dialect_insert(session, PickOpinion.__table__).values(values)
    return statement.on_conflict_do_update(
        index_elements=[PickOpinion.customer_id, PickOpinion.item_id],
        set_={"opinion": statement.excluded.opinion, "at": statement.excluded.at, "by": statement.excluded.by})


def dislikes_ruling_out(session: Session, customer_id: str, item_ids: Iterable[str]) -> list[PickOpinion]:
    """The customer's dislike rows that keep any of ``item_ids`` from being offered under the current mapping:
    a row ``d`` rules item ``x`` out when ``x`` is in ``expand_dislikes({d})``, i.e. when
    :func:`~dangol_cloud.menu_mapping.ruled_out` of ``d`` (``d`` and the menu item it is sold as) holds ``x`` or the
    menu item ``x`` is sold as."""
    from dangol_cloud.menu_mapping import menu_item_map, ruled_out

    dislikes = session.scalars(select(PickOpinion).where(PickOpinion.customer_id == customer_id,
                                                         PickOpinion.opinion == "dislike")).all()
    if not dislikes:
        return []
    named = set(item_ids)
    mapping = menu_item_map(session, named | {d.item_id for d in dislikes})
    keys = named | {mapping[i] for i in named if mapping.get(i) is not None}
    return [d for d in dislikes if ruled_out([d.item_id], mapping) & keys]


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
            per item shown at a visit of a known customer and not bought within :data:`CREDIT_WINDOW` after it,
            for visits at least that old (so the outcome is known): :func:`shown_and_ignored`.
    """

    dislikes: dict[str, set[str]] = field(default_factory=dict)
    positives: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["customer", "item", "ts", "quantity", "store"]))
    ignored: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["customer", "item", "ts"]))


def training_feedback(session: Session, tz: str = "UTC", *, timezone_set: bool = True) -> TrainingFeedback:
    """Read the opinions, credits and shown-and-ignored picks for a training run (see :class:`TrainingFeedback`);
    times are converted to naive local time in ``tz``, as :func:`dangol_cloud.training.load_frames` does.
    ``timezone_set``: whether the ``TIMEZONE`` setting was set (:func:`shown_and_ignored`)."""
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
    positives["ts"] = local_naive(positives["ts"], tz)
    positives["quantity"] = 1.0
    positives["store"] = ""
    return TrainingFeedback(dislikes, positives, shown_and_ignored(session, tz, timezone_set=timezone_set))


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
