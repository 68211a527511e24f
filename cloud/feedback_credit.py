""""Shown pick bought" credits and shown-and-ignored picks: what the door showed at an arrival against what the
customer bought after it (re-exported by :mod:`dangol_cloud.feedback`).

* :func:`credit_shown_picks` attributes a purchase line to the latest visit at most :data:`CREDIT_WINDOW` before it
  whose screen showed the item (as the menu item the product is sold as, or the product itself); one purchase line
  gives at most one credit (``pick_credits.purchase_id`` is the primary key), so re-running it never counts twice.
* :func:`shown_and_ignored` gives the showings that no purchase of the item followed within the window.
* Clocks: the door reports arrivals as aware UTC (``event/1``'s ``ts``, made by the edge's ``EventFactory`` with
  ``datetime.now(timezone.utc)``: the box's own offset is not carried). A naive sale time of an imported file is
  read in its store's zone, else in ``TIMEZONE``; left at its default (UTC, "the doors use their own clocks") that
  is the café's wall clock stored as if it were UTC, hours off the arrivals outside UTC. Such purchases are neither
  credited nor allowed to mark a showing ignored (:func:`clock_known`); the POS API's sales carry aware times
  and always count. The dashboard's item page says so (:func:`stores_without_clock`).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from dangol_cloud.models import PickCredit, ProductMapping, Purchase, Store, Visit, utcnow
from dangol_cloud.store_zones import store_zones

__all__ = ["CREDIT_WINDOW", "clock_known", "credit_shown_picks", "shown_and_ignored", "stores_without_clock"]

log = logging.getLogger("dangol_cloud.feedback")

#: A purchase this long after a visit is credited to the picks shown at that visit (a café stay).
CREDIT_WINDOW = timedelta(hours=3)


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


def stores_without_clock(session: Session, timezone_set: bool, store_ids: Collection[str] | None = None
                         ) -> list[str]:
    """Names of the stores (of ``store_ids`` only, when given: a staff user's) whose imported sales
    :func:`credit_shown_picks` cannot match with door arrivals (:func:`clock_known` false), sorted; empty when
    ``TIMEZONE`` is set. For the dashboard's note."""
    if timezone_set:
        return []
    known = clock_known(session, timezone_set)
    return sorted(name for store_id, name in session.execute(select(Store.id, Store.name))
                  if not known(store_id) and (store_ids is None or store_id in store_ids))


def credit_shown_picks(session: Session, window: timedelta = CREDIT_WINDOW, *, timezone_set: bool = True) -> int:
    """Credit every not yet credited purchase line of an item shown at a visit of the customer at most ``window``
    before it: the latest such visit whose screen showed the item (the visit's ``shown_items``, best first), not
    merely the latest visit (an arrival 10 minutes later may have shown other picks). Returns the number of new
    credits.

    A line of a POS product counts for the menu item it is sold as under the current mapping
    (``coalesce(menu_item_id, item_id)``, as :func:`dangol_cloud.analytics.compute` translates it); a product
    shown as itself (an unmapped product's pick, shown before the owner mapped it) counts as itself; when visits
    showed both, the later visit wins (the same visit: the menu item). The credit's ``item_id`` is the item shown,
    so a later re-mapping does not move it.

    Only purchases from the first visit with shown items on are looked at (imported history predates them). With
    ``timezone_set`` False (``TIMEZONE`` left at its default), purchase lines of a store without a zone of its own
    (:func:`clock_known`) are left out, except the POS API's (``source == "pos"``: aware times by contract): their
    file's wall-clock times were stored as UTC. Their number is logged (a warning, once per call).
    """
    first = session.scalar(select(func.min(Visit.ts)).where(Visit.customer_id.is_not(None)))
    if first is None:
        return 0
    shown = _showings(session.execute(select(Visit.id, Visit.customer_id, Visit.ts, Visit.shown_items)
                                      .where(Visit.customer_id.is_not(None))).all())
    credited = select(PickCredit.purchase_id)
    menu_item = func.coalesce(ProductMapping.menu_item_id, Purchase.item_id)  # as Analytics translates a sale
    purchases = pd.DataFrame(session.execute(
        select(Purchase.id, Purchase.customer_id, Purchase.item_id, menu_item, Purchase.ts, Purchase.store_id,
               Purchase.source)
        .outerjoin(ProductMapping, ProductMapping.product_id == Purchase.item_id)
        .where(Purchase.ts >= first, Purchase.id.not_in(credited))
    ).all(), columns=["purchase_id", "customer_id", "product", "menu_item", "ts", "store", "source"])
    if not timezone_set and len(purchases):
        known = clock_known(session, timezone_set)
        keep = (purchases["source"] == "pos") | purchases["store"].map(known).astype(bool)
        if (~keep).any():
            log.warning("left %d purchase line(s) of stores without a known clock out of the shown-pick credits: "
                        "TIMEZONE is not set and the store has no time zone, so their imported times are not "
                        "comparable with the doors' arrivals (Stores page → time zone)", int((~keep).sum()))
        purchases = purchases[keep]
    if purchases.empty or shown.empty:
        return 0
    purchases = purchases.assign(ts=pd.to_datetime(purchases["ts"], utc=True)).sort_values("ts", kind="stable")
    matches = []
    for preference, key in enumerate(("menu_item", "product")):  # the menu item sold, else the product itself
        found = pd.merge_asof(purchases.assign(item=purchases[key]), shown, on="ts", by=["customer_id", "item"],
                              direction="backward", tolerance=pd.Timedelta(window))
        matches.append(found.dropna(subset=["visit_id"]).assign(preference=preference))
    best = (pd.concat(matches, ignore_index=True)
            .sort_values(["purchase_id", "visit_ts", "preference"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("purchase_id"))
    rows = [{"purchase_id": int(r.purchase_id), "visit_id": int(r.visit_id), "customer_id": r.customer_id,
             "item_id": r.item, "shown_rank": int(r.rank), "at": r.ts.to_pydatetime()}
            for r in best.itertuples(index=False)]
    if rows:
        session.execute(insert(PickCredit), rows)
    log.info("credited %d shown picks bought", len(rows))
    return len(rows)


def _showings(visits: list) -> pd.DataFrame:
    """One row per (visit, distinct item shown): ``visit_id``, ``customer_id``, ``item`` (str), ``rank`` (0 = first
    on the screen), ``ts`` and ``visit_ts`` (the visit, aware UTC), sorted by ``ts``; from ``(id, customer id, ts,
    shown_items)`` rows."""
    rows = []
    for vid, customer, ts, items in visits:
        shown = [str(i) for i in items or []]
        rows += [(vid, customer, item, rank, ts) for rank, item in enumerate(shown) if shown.index(item) == rank]
    frame = pd.DataFrame(rows, columns=["visit_id", "customer_id", "item", "rank", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.assign(visit_ts=frame["ts"]).sort_values("ts", kind="stable")


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
