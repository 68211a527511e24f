""""Shown pick bought" credits and shown-and-ignored picks: what the door showed at an arrival against what the
customer bought after it (re-exported by :mod:`dangol_cloud.feedback`).

* :func:`credit_shown_picks` attributes a purchase line to the latest visit at most :data:`CREDIT_WINDOW` before it
  whose screen showed the item (as the menu item the product is sold as, or the product itself); one purchase line
  gives at most one credit (``pick_credits.purchase_id`` is the primary key), so re-running it never counts twice.
* :func:`match_shown_picks` is that matching without writing (what it would credit now);
  :func:`shown_pick_credits` gives the credits of a date range's visits, stored and pending, for the analytics
  page's "shown → bought" (:mod:`dangol_cloud.analytics`): one rule, so the page and the training agree.
* :func:`shown_and_ignored` gives the showings that no purchase of the item followed within the window.
* Clocks: the door reports arrivals as aware UTC (``event/1``'s ``ts``, made by the edge's ``EventFactory`` with
  ``datetime.now(timezone.utc)``: the box's own offset is not carried). A naive sale time of an imported file is
  read in its store's zone, else in ``TIMEZONE``; left at its default (UTC, "the doors use their own clocks") that
  is the café's wall clock stored as if it were UTC, hours off the arrivals outside UTC. Such purchases are neither
  credited nor allowed to mark a showing ignored (:func:`clock_known`); the POS API's sales carry aware times
  and always count (:func:`sale_time_known`, the one rule of which purchase lines count, for the training and
  the analytics page alike). The dashboard's item and analytics pages say so (:func:`stores_without_clock`).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import ColumnElement, and_, func, insert, select
from sqlalchemy.orm import Session

from dangol_cloud.models import PickCredit, ProductMapping, Purchase, Store, Visit, utcnow
from dangol_cloud.store_zones import store_zones

__all__ = ["CREDIT_WINDOW", "POS_SOURCE", "clock_known", "credit_shown_picks", "match_shown_picks", "sale_time_known",
           "shown_and_ignored", "shown_pick_credits", "stores_without_clock"]

log = logging.getLogger("dangol_cloud.feedback")

#: A purchase this long after a visit is credited to the picks shown at that visit (a café stay).
CREDIT_WINDOW = timedelta(hours=3)
#: ``purchases.source`` of the POS API's sales (aware times by contract: comparable with the doors' whatever the zone).
POS_SOURCE = "pos"


def clock_known(session: Session, timezone_set: bool) -> Callable[[str | None], bool]:
    """Whether a store's sale times are real instants, comparable with the door's arrival times (aware UTC from the
    edge): ``store id (or None) -> bool``. True for every store when the ``TIMEZONE`` setting was set
    (``timezone_set``: :attr:`~dangol_cloud.settings.Settings.door_timezone` is not None), else only for the stores
    with a zone of their own (:func:`dangol_cloud.store_zones.store_zones`). Left at its default, ``TIMEZONE`` reads
    the naive times of an imported file as UTC (the doors use their own clocks), so in Seoul a sale at 09:30 is
    stored 9 h after the door's 00:25 UTC arrival that preceded it."""
    if timezone_set:
        return lambda store: True
    zoned = set(store_zones(session))
    return lambda store: store in zoned


def sale_time_known(session: Session, timezone_set: bool) -> Callable[[str | None, str], bool]:
    """Whether a purchase line's time is comparable with the doors' arrivals, so that it may credit a shown pick:
    ``(store id or None, purchases.source) -> bool``. Always with ``TIMEZONE`` set; else a POS API sale
    (:data:`POS_SOURCE`: aware times) at any store, an imported line only at a store with a zone of its own
    (:func:`clock_known`). The one rule of :func:`match_shown_picks` (the training) and of the analytics page's
    note (:func:`stores_without_clock`)."""
    known = clock_known(session, timezone_set)
    return lambda store, source: source == POS_SOURCE or known(store)


def stores_without_clock(session: Session, timezone_set: bool, store_ids: Collection[str] | None = None, *,
                         since: datetime | None = None, until: datetime | None = None) -> list[str]:
    """Names of the stores (of ``store_ids`` only, when given: a staff user's) whose imported sales
    :func:`credit_shown_picks` cannot match with door arrivals (:func:`clock_known` false), sorted; empty when
    ``TIMEZONE`` is set. With ``since`` and ``until`` (aware), only those with a purchase line dated in
    ``[since, until)`` that :func:`sale_time_known` leaves out (an imported one: a store selling only through the
    POS API loses nothing). For the dashboard's notes."""
    if timezone_set:
        return []
    known = clock_known(session, timezone_set)
    unclocked = {store_id: name for store_id, name in session.execute(select(Store.id, Store.name))
                 if not known(store_id) and (store_ids is None or store_id in store_ids)}
    if since is not None and until is not None and unclocked:
        counts = sale_time_known(session, timezone_set)
        sold = session.execute(select(Purchase.store_id, Purchase.source).distinct().where(
            Purchase.ts >= since, Purchase.ts < until, Purchase.store_id.in_(sorted(unclocked)))).all()
        unclocked = {store: unclocked[store] for store in {store for store, source in sold
                                                           if not counts(store, source)}}
    return sorted(unclocked.values())


def credit_shown_picks(session: Session, window: timedelta = CREDIT_WINDOW, *, timezone_set: bool = True) -> int:
    """Credit every not yet credited purchase line of an item shown at a visit of the customer at most ``window``
    before it (:func:`match_shown_picks`: the latest visit that showed the item). Returns the number of new
    credits; the purchase lines left out for an unknown clock are counted in a warning (once per call)."""
    matches, left_out = match_shown_picks(session, window, timezone_set=timezone_set)
    if left_out:
        log.warning("left %d purchase line(s) of stores without a known clock out of the shown-pick credits: "
                    "TIMEZONE is not set and the store has no time zone, so their imported times are not "
                    "comparable with the doors' arrivals (Stores page → time zone)", left_out)
    rows = [{"purchase_id": int(r.purchase_id), "visit_id": int(r.visit_id), "customer_id": r.customer_id,
             "item_id": r.item_id, "shown_rank": int(r.shown_rank), "at": r.at.to_pydatetime()}
            for r in matches.itertuples(index=False)]
    if rows:
        session.execute(insert(PickCredit), rows)
    log.info("credited %d shown picks bought", len(rows))
    return len(rows)


_MATCH_COLUMNS = ["purchase_id", "visit_id", "customer_id", "item_id", "shown_rank", "at", "visit_ts", "visit_store"]


def match_shown_picks(session: Session, window: timedelta = CREDIT_WINDOW, *, timezone_set: bool = True,
                      purchases: Sequence[ColumnElement[bool]] = (), visits: Sequence[ColumnElement[bool]] = ()
                      ) -> tuple[pd.DataFrame, int]:
    """The credits :func:`credit_shown_picks` would add now, without writing them: each not yet credited purchase
    line (of those matching the extra conditions ``purchases`` too) of an item shown at a visit of the customer at
    most ``window`` before it (among the visits matching ``visits`` too), matched to the latest such visit whose
    screen showed the item (the visit's ``shown_items``, best first), not merely the latest visit (an arrival 10
    minutes later may have shown other picks).

    A line of a POS product counts for the menu item it is sold as under the current mapping
    (``coalesce(menu_item_id, item_id)``, as :func:`dangol_cloud.analytics.compute` translates it); a product
    shown as itself (an unmapped product's pick, shown before the owner mapped it) counts as itself; when visits
    showed both, the later visit wins (the same visit or time: the menu item; visits at one time: the last id).
    The credit's ``item_id`` is the item shown, so a later re-mapping does not move it.

    Only a customer's purchases from their first visit on (and up to the last visit plus ``window``) are read:
    imported history predates the doors. With ``timezone_set`` False (``TIMEZONE`` left at its default),
    purchase lines of a store without a zone of its own (:func:`clock_known`) are left out, except the POS API's
    (:func:`sale_time_known`: aware times by contract): their file's wall-clock times were stored as UTC.

    Returns:
        ``(matches, left_out)``: one row per purchase line credited, columns ``purchase_id``, ``visit_id``,
        ``customer_id``, ``item_id`` (the item shown), ``shown_rank`` (0 = first on the screen), ``at`` (the
        purchase) and ``visit_ts`` (aware UTC), ``visit_store``; and the number of purchase lines left out for an
        unknown clock.
    """
    known_visit = [Visit.customer_id.is_not(None), *visits]
    first, last = session.execute(select(func.min(Visit.ts), func.max(Visit.ts)).where(*known_visit)).one()
    none = pd.DataFrame(columns=_MATCH_COLUMNS)
    if first is None:
        return none, 0
    shown = _showings(session.execute(select(Visit.id, Visit.customer_id, Visit.ts, Visit.shown_items,
                                             Visit.store_id).where(*known_visit)).all())
    if shown.empty:
        return none, 0
    menu_item = func.coalesce(ProductMapping.menu_item_id, Purchase.item_id)  # as Analytics translates a sale
    since_visit = (select(Visit.customer_id, func.min(Visit.ts).label("ts")).where(*known_visit)
                   .group_by(Visit.customer_id).subquery())  # each customer's sales from their first visit on
    bought = pd.DataFrame(session.execute(
        select(Purchase.id, Purchase.customer_id, Purchase.item_id, menu_item, Purchase.ts, Purchase.store_id,
               Purchase.source)
        .join(since_visit, and_(since_visit.c.customer_id == Purchase.customer_id, Purchase.ts >= since_visit.c.ts))
        .outerjoin(ProductMapping, ProductMapping.product_id == Purchase.item_id)
        .where(Purchase.ts >= first, Purchase.ts <= last + window, *purchases,
               Purchase.id.not_in(select(PickCredit.purchase_id)))
    ).all(), columns=["purchase_id", "customer_id", "product", "menu_item", "ts", "store", "source"])
    left_out = 0
    if not timezone_set and len(bought):
        counts = sale_time_known(session, timezone_set)
        keep = pd.Series([counts(store, source) for store, source in zip(bought["store"], bought["source"])],
                         index=bought.index, dtype=bool)
        left_out, bought = int((~keep).sum()), bought[keep]
    if bought.empty:
        return none, left_out
    bought = bought.assign(ts=pd.to_datetime(bought["ts"], utc=True)).sort_values("ts", kind="stable")
    shown_pairs = pd.MultiIndex.from_frame(shown[["customer_id", "item"]]).unique()
    matches = []
    for preference, key in enumerate(("menu_item", "product")):  # the menu item sold, else the product itself
        lines = bought.assign(item=bought[key])
        if preference:  # the product itself: only where it is sold as another menu item (else the same match)
            lines = lines[lines["product"] != lines["menu_item"]]
        lines = lines[pd.MultiIndex.from_frame(lines[["customer_id", "item"]]).isin(shown_pairs)]  # cheap cut
        found = pd.merge_asof(lines, shown, on="ts", by=["customer_id", "item"], direction="backward",
                              tolerance=pd.Timedelta(window))
        matches.append(found.dropna(subset=["visit_id"]).assign(preference=preference))
    best = (pd.concat(matches, ignore_index=True)
            .sort_values(["purchase_id", "visit_ts", "preference"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("purchase_id")
            .rename(columns={"item": "item_id", "rank": "shown_rank", "ts": "at"}))
    return best.astype({"visit_id": "int64", "shown_rank": "int64"})[_MATCH_COLUMNS].reset_index(drop=True), left_out


def shown_pick_credits(session: Session, since: datetime, until: datetime, *,
                       stores: Collection[str] | None = None, timezone_set: bool = True,
                       window: timedelta = CREDIT_WINDOW) -> pd.DataFrame:
    """The shown-pick credits of the visits in ``[since, until)``: those :func:`credit_shown_picks` stored and
    those it would add now (:func:`match_shown_picks`), so a figure counted from them equals the training's
    credits whether or not a training ran since the purchases. With ``stores`` (a staff user's, or the one
    chosen), only the credits whose visit and purchase line are both at one of them; the visit matched is still
    chosen among every store's visits, as the training chooses it. Columns ``purchase_id``, ``visit_id``; for
    :func:`dangol_cloud.analytics.compute`."""
    at_p = [Purchase.store_id.in_(sorted(stores))] if stores is not None else []
    at_v = [Visit.store_id.in_(sorted(stores))] if stores is not None else []
    stored = session.execute(
        select(PickCredit.purchase_id, PickCredit.visit_id)
        .join(Visit, Visit.id == PickCredit.visit_id).join(Purchase, Purchase.id == PickCredit.purchase_id)
        .where(Visit.ts >= since, Visit.ts < until, *at_v, *at_p)).all()
    pending, _left_out = match_shown_picks(
        session, window, timezone_set=timezone_set, purchases=[Purchase.ts >= since, Purchase.ts < until + window,
                                                               *at_p],
        visits=[Visit.ts >= since, Visit.ts < until + window])  # a later visit may take a purchase from one before
    pending = pending[(pending["visit_ts"] < pd.Timestamp(until))
                      & (pending["visit_store"].isin(set(stores)) if stores is not None else True)]
    return pd.DataFrame([*map(tuple, stored), *zip(pending["purchase_id"], pending["visit_id"])],
                        columns=["purchase_id", "visit_id"])


def _showings(visits: list) -> pd.DataFrame:
    """One row per (visit, distinct item shown): ``visit_id``, ``customer_id``, ``item`` (str), ``rank`` (0 = first
    on the screen), ``ts`` and ``visit_ts`` (the visit, aware UTC), ``visit_store``, sorted by ``ts`` then visit id
    (the same order whatever the query's); from ``(id, customer id, ts, shown_items, store id)`` rows."""
    rows = []
    for vid, customer, ts, items, store in visits:
        shown = [str(i) for i in items or []]
        rows += [(vid, customer, item, rank, ts, store) for rank, item in enumerate(shown)
                 if shown.index(item) == rank]
    frame = pd.DataFrame(rows, columns=["visit_id", "customer_id", "item", "rank", "ts", "visit_store"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.assign(visit_ts=frame["ts"]).sort_values(["ts", "visit_id"], kind="stable")


def local_naive(ts: pd.Series, tz: str) -> pd.Series:
    """``(n,)`` times (aware or naive UTC) as naive ``datetime64[ns]`` local time in ``tz``."""
    return pd.to_datetime(ts, utc=True).dt.tz_convert(ZoneInfo(tz)).dt.tz_localize(None).astype("datetime64[ns]")


def shown_and_ignored(session: Session, tz: str = "UTC", window: timedelta = CREDIT_WINDOW, *,
                      timezone_set: bool = True) -> pd.DataFrame:
    """Picks shown at a known customer's visit and not bought after it: ``customer``, ``item``, ``ts`` (the visit,
    naive local time in ``tz``), one row per (visit, distinct item shown) unless a :class:`PickCredit` of that
    customer and item has its purchase (``at``) within ``window`` after the visit, whichever visit it credits (the
    latest that showed the item: an earlier showing followed by the purchase was not ignored either). A credit
    names the item shown, so a menu item bought as a product sold as it counts. Only visits older than ``window``
    (a later purchase could still follow a younger one); with ``timezone_set`` False, not the visits of stores
    without a known clock (:func:`clock_known`: their imported sales cannot be matched; counted in a warning).
    Call it after :func:`credit_shown_picks`."""
    cutoff = utcnow() - window
    visits = session.execute(select(Visit.customer_id, Visit.store_id, Visit.ts, Visit.shown_items)
                             .where(Visit.customer_id.is_not(None), Visit.ts <= cutoff)).all()
    if not timezone_set:
        known = clock_known(session, timezone_set)
        kept = [v for v in visits if known(v.store_id)]
        if len(kept) < len(visits):
            log.warning("left %d door visit(s) at stores without a known clock out of the shown-and-ignored picks: "
                        "TIMEZONE is not set and the store has no time zone (Stores page → time zone)",
                        len(visits) - len(kept))
        visits = kept
    bought: dict[tuple[str, str], list[datetime]] = {}
    for customer, item, at in session.execute(select(PickCredit.customer_id, PickCredit.item_id, PickCredit.at)):
        bought.setdefault((customer, item), []).append(at)
    for times in bought.values():
        times.sort()
    rows = []
    for customer, _store, ts, shown in visits:
        for item in dict.fromkeys(str(i) for i in shown or []):
            times = bought.get((customer, item), [])
            k = bisect.bisect_left(times, ts)
            if k == len(times) or times[k] > ts + window:
                rows.append((customer, item, ts))
    frame = pd.DataFrame(rows, columns=["customer", "item", "ts"])
    frame["ts"] = local_naive(frame["ts"], tz)
    return frame
