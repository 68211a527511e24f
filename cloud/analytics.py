"""Numbers behind the analytics page (portable SQL + Python, same on SQLite and PostgreSQL).

The window is local days (:class:`LocalDays`, the dashboard's: a sale or arrival is in it when its date on its store's
own clock is — a chain across zones counts each store's own day, and "All stores" is their sum) or an exact
``[since, until)`` in UTC; hours, weekdays and trend days are each store's local ones. Door arrivals come from
``visits``; sales from ``purchases`` (a *shop visit* is one basket: a customer's lines at one timestamp).
Sales of POS products count for the menu item they are mapped to (:mod:`dangol_cloud.menu_mapping`).

"Shown → bought" (issue 11) counts the training's credits (:func:`dangol_cloud.feedback_credit.shown_pick_credits`:
those :func:`~dangol_cloud.feedback_credit.credit_shown_picks` stored, and those it would add now): a purchase line
credits the customer's latest door visit at most :data:`~dangol_cloud.feedback_credit.CREDIT_WINDOW` before it
whose screen showed the item, once. With ``TIMEZONE`` unset, a store without a zone of its own has imported sale
times that are not the doors' UTC: they credit nothing, as in training (the one rule of which lines count,
:func:`~dangol_cloud.feedback_credit.sale_time_known`), while its door visits and its POS API sales (aware times)
count; the page names a store only when it has imported sales in the range (the figure may read low there).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from dangol_cloud.feedback_credit import CREDIT_WINDOW, shown_pick_credits, stores_without_clock
from dangol_cloud.models import CatalogueItem, ProductMapping, Purchase, Visit
from dangol_cloud.store_zones import store_zones

__all__ = ["Analytics", "LocalDays", "REVENUE_MAX_LINES", "compute", "day_range", "local_day"]

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
#: Amounts are encrypted at rest, so revenue is summed after decryption; above this many purchase lines in the
#: window the page asks for a narrower range instead of decrypting them all on a page view.
REVENUE_MAX_LINES = 150_000


@dataclass
class Analytics:
    """Dashboard analytics over the window: local days (``since``/``until``: the UTC span covering every shown
    store's days) or ``[since, until)``.

    Attributes:
        visits_by_hour: 24 counts (local hour 0-23); visits_by_weekday: 7 counts (Mon..Sun) of door arrivals.
        recognised / unknown: arrivals with / without a recognised customer; regulars: distinct recognised people.
        top_items: ``[(menu item or product name, units)]`` best sellers in the window, at most 10.
        shown_visits: recognised arrivals whose screen showed picks; converted: those credited with a purchase;
            credits: purchase lines credited to them (each at most once, as the training credits them);
            stores_without_clock: names of the shown stores whose imported sales in the window credit nothing
            (``TIMEZONE`` unset and no zone of their own: imported sale times not comparable with the doors'; their
            visits and POS API sales count), when the window has visits with picks shown.
        trend: ``[(period start date, arrivals, recognised, baskets, revenue or None)]`` by ``bucket``.
        bucket: ``"day"`` (ranges up to 120 days), ``"week"`` (weeks start on Monday; up to 2 years) or
            ``"month"``; every period between the first and the last with data is listed (empty ones as 0).
        heatmap: 7×24 counts of shop visits (baskets) by local weekday and hour; ``heatmap_has_times``: False
            when every timestamp is midnight (data with dates only, e.g. Ta-Feng).
        revenue: total amount in the window (None if over :data:`REVENUE_MAX_LINES` lines or no amounts).
        lines: purchase lines in the window. sale_stores: the stores (None: store-less history) of those lines.
    """

    since: datetime
    until: datetime
    visits_by_hour: list[int] = field(default_factory=lambda: [0] * 24)
    visits_by_weekday: list[int] = field(default_factory=lambda: [0] * 7)
    recognised: int = 0
    unknown: int = 0
    regulars: int = 0
    top_items: list[tuple[str, float]] = field(default_factory=list)
    shown_visits: int = 0
    converted: int = 0
    credits: int = 0
    conversion_hours: int = int(CREDIT_WINDOW / timedelta(hours=1))
    stores_without_clock: list[str] = field(default_factory=list)
    trend: list[tuple[date, int, int, int, float | None]] = field(default_factory=list)
    bucket: str = "day"
    heatmap: list[list[int]] = field(default_factory=lambda: [[0] * 24 for _ in range(7)])
    heatmap_has_times: bool = False
    revenue: float | None = None
    lines: int = 0
    sale_stores: set[str | None] = field(default_factory=set)

    @property
    def pick_rate(self) -> float | None:
        """Share of shown-pick visits credited with a purchase of a shown pick (None if there were none)."""
        return self.converted / self.shown_visits if self.shown_visits else None


def local_day(ts: datetime, zone: ZoneInfo) -> date:
    """The local date of a stored time; a time the zone cannot show (9999-12-31 east of UTC) → its UTC date."""
    try:
        return ts.astimezone(zone).date()
    except OverflowError:
        return ts.date()


def _zone_groups(fallback: ZoneInfo, own: dict[str, ZoneInfo], stores: Collection[str] | None
                 ) -> list[tuple[ZoneInfo, list[str] | None, list[str]]]:
    """The shown stores (None: every store, and store-less history) by wall clock: ``[(zone, only these stores or
    None, but not these)]``; ``fallback`` (``TIMEZONE``) first, for every store without a zone of its own (or with
    the same one) and for store-less sales, if any is shown (or no store is: ``stores`` empty)."""
    moved: dict[str, list[str]] = {}
    for store, zone in own.items():
        if zone.key != fallback.key and (stores is None or store in stores):
            moved.setdefault(zone.key, []).append(store)
    others = sorted(s for ids in moved.values() for s in ids)
    groups = [(ZoneInfo(key), sorted(ids), []) for key, ids in sorted(moved.items())]
    if stores is None or set(stores) - set(others) or not groups:  # (no store at all: the fallback, showing none)
        groups.insert(0, (fallback, None, others))
    return groups


def _of_group(store: ColumnElement, only: list[str] | None, but: list[str]) -> list[ColumnElement]:
    """SQL conditions: the row's ``store`` is one of a :func:`_zone_groups` group's (``only``, else not in ``but``)."""
    if only is not None:
        return [store.in_(only)]
    return [or_(store.is_(None), store.not_in(but))] if but else []


@dataclass(frozen=True)
class LocalDays:
    """The local days ``first`` to ``last`` (both included) on each store's own clock: a sale or arrival is in them
    when its date in its store's zone (``own``: :func:`~dangol_cloud.store_zones.store_zones`; else ``fallback``, the
    ``TIMEZONE`` setting, also for store-less history) is one of them."""

    first: date
    last: date
    fallback: ZoneInfo
    own: dict[str, ZoneInfo]

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """``[since, until)`` of these days in ``zone`` (aware)."""
        return (datetime.combine(self.first, time(0), zone),
                datetime.combine(self.last + timedelta(days=1), time(0), zone))

    def span(self, stores: Collection[str] | None = None) -> tuple[datetime, datetime]:
        """The UTC span covering the days of every one of ``stores`` (None: all)."""
        bounds = [self.bounds(zone) for zone, _, _ in _zone_groups(self.fallback, self.own, stores)]
        return min(b[0] for b in bounds), max(b[1] for b in bounds)

    def where(self, ts: ColumnElement, store: ColumnElement, stores: Collection[str] | None = None
              ) -> list[ColumnElement]:
        """SQL conditions: the row's time ``ts`` falls on these days in the zone of its ``store`` (per store zone
        ``[since, until)`` combined with OR, inside their overall span so that the time index is used)."""
        terms = []
        for zone, only, but in _zone_groups(self.fallback, self.own, stores):
            since, until = self.bounds(zone)
            terms.append(and_(ts >= since, ts < until, *_of_group(store, only, but)))
        if len(terms) == 1:
            return [terms[0]]
        since, until = self.span(stores)
        return [ts >= since, ts < until, or_(*terms)]


def day_range(session: Session, tz: str, stores: Collection[str] | None = None) -> tuple[date, date] | None:
    """The first and last local day of any purchase or arrival, each on its store's own clock (``tz``: the
    ``TIMEZONE`` setting, for the stores without a zone of their own and store-less history) — of ``stores`` only,
    when given —, or None with no data: the "All history" preset and "your data runs …".

    Raises:
        ValueError: a store's own zone is unknown.
    """
    own = {store: ZoneInfo(name) for store, name in store_zones(session).items()}
    days = []
    for zone, only, but in _zone_groups(ZoneInfo(tz), own, stores):
        for model in (Purchase, Visit):
            where = _of_group(model.store_id, only, but)
            if stores is not None:
                where.append(model.store_id.in_(sorted(stores)))
            for order in (model.ts.asc(), model.ts.desc()):  # each the first row of the time index
                ts = session.scalar(select(model.ts).where(*where).order_by(order).limit(1))
                if ts is not None:
                    days.append(local_day(ts, zone))
    return (min(days), max(days)) if days else None


def _bucket_start(day: date, bucket: str) -> date:
    if bucket == "month":
        return day.replace(day=1)
    return day - timedelta(days=day.weekday()) if bucket == "week" else day


def _next_bucket(day: date, bucket: str) -> date:
    if bucket == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day + timedelta(days=7 if bucket == "week" else 1)


def compute(session: Session, *, tz: str, days: int = 90, now: datetime | None = None,
            since: datetime | None = None, until: datetime | None = None,
            first: date | None = None, last: date | None = None,
            store_id: str | Collection[str] | None = None, timezone_set: bool = True) -> Analytics:
    """Analytics for the local days ``first`` to ``last`` (:class:`LocalDays`: each store's own days), else for
    ``[since, until)``, else for the last ``days`` days up to ``now``; with ``store_id`` (one id, or a collection of
    ids: a staff user's stores; empty = none) only those stores' arrivals and sales. None: every store.
    ``timezone_set``: whether the ``TIMEZONE`` setting was set (:attr:`~dangol_cloud.settings.Settings.door_timezone`
    is not None), as the training is told.

    Hours, weekdays and trend days are in time zone ``tz`` (IANA name), each store's arrivals and sales in the
    store's own zone where it has one (:mod:`dangol_cloud.store_zones`: 08:00 is breakfast in every store).

    Raises:
        ValueError: a store's own zone is unknown.
    """
    zone = ZoneInfo(tz)
    own = {store: ZoneInfo(name) for store, name in store_zones(session).items()}
    stores = None if store_id is None else [store_id] if isinstance(store_id, str) else sorted(store_id)
    window = LocalDays(first, last, zone, own) if first is not None and last is not None else None
    if window is not None:
        since, until = window.span(stores)
    if until is None:
        until = now or datetime.now(zone)
    if since is None:
        since = until - timedelta(days=days)

    def within(ts: ColumnElement, store: ColumnElement) -> list[ColumnElement]:
        at = [store.in_(stores)] if stores is not None else []
        return [*(window.where(ts, store, stores) if window is not None else [ts >= since, ts < until]), *at]

    result = Analytics(since=since, until=until)
    span = timedelta(days=(last - first).days + 1) if window is not None else until - since
    result.bucket = "month" if span > timedelta(days=730) else "week" if span > timedelta(days=120) else "day"
    trend: dict[date, list] = {}

    def slot(ts: datetime, store: str | None) -> list:
        key = _bucket_start(ts.astimezone(own.get(store, zone)).date(), result.bucket)
        return trend.setdefault(key, [0, 0, 0, 0.0, False])

    visits = session.execute(select(Visit.id, Visit.ts, Visit.customer_id, Visit.shown_items, Visit.store_id)
                             .where(*within(Visit.ts, Visit.store_id))).all()
    regulars = set()
    for _vid, ts, customer_id, _, store in visits:
        local = ts.astimezone(own.get(store, zone))
        result.visits_by_hour[local.hour] += 1
        result.visits_by_weekday[local.weekday()] += 1
        row = slot(ts, store)
        row[0] += 1
        if customer_id:
            result.recognised += 1
            regulars.add(customer_id)
            row[1] += 1
        else:
            result.unknown += 1
    result.regulars = len(regulars)

    in_window = and_(*within(Purchase.ts, Purchase.store_id))
    menu_item = func.coalesce(ProductMapping.menu_item_id, Purchase.item_id)
    top = session.execute(select(CatalogueItem.name, func.sum(Purchase.quantity))
                          .select_from(Purchase)
                          .outerjoin(ProductMapping, ProductMapping.product_id == Purchase.item_id)
                          .join(CatalogueItem, CatalogueItem.id == menu_item).where(in_window)
                          .group_by(CatalogueItem.id, CatalogueItem.name)
                          .order_by(func.sum(Purchase.quantity).desc(), CatalogueItem.name).limit(10)).all()
    result.top_items = [(name, float(q)) for name, q in top]
    # shop visits (baskets) by time: one row per distinct timestamp with its number of customers
    for ts, store, baskets in session.execute(
            select(Purchase.ts, Purchase.store_id, func.count(func.distinct(Purchase.customer_id)))
            .where(in_window).group_by(Purchase.ts, Purchase.store_id)):
        local = ts.astimezone(own.get(store, zone))
        result.heatmap[local.weekday()][local.hour] += baskets
        result.heatmap_has_times |= local.time() != time(0)
        slot(ts, store)[2] += baskets
        result.sale_stores.add(store)
    result.lines = session.scalar(select(func.count()).select_from(Purchase).where(in_window)) or 0
    if 0 < result.lines <= REVENUE_MAX_LINES:
        total, any_amount = 0.0, False
        for ts, store, amount in session.execute(select(Purchase.ts, Purchase.store_id, Purchase.amount)
                                                 .where(in_window)):
            if amount is not None:
                row = slot(ts, store)
                row[3] += amount
                row[4] = any_amount = True
                total += amount
        result.revenue = total if any_amount else None
    if trend:  # every period from the first to the last with data, empty ones as 0: an honest time axis
        day, last = min(trend), max(trend)
        while day < last:
            trend.setdefault(day, [0, 0, 0, 0.0, False])
            day = _next_bucket(day, result.bucket)
    has_amounts = result.revenue is not None
    result.trend = [(day, r[0], r[1], r[2], (r[3] if has_amounts else None)) for day, r in sorted(trend.items())]
    unclocked = window.bounds(zone) if window is not None else (since, until)
    _shown_bought(session, result, [v for v in visits if v[2] and v[3]], stores, timezone_set, unclocked)
    return result


def _shown_bought(session: Session, result: Analytics, shown: list, stores: list[str] | None,
                  timezone_set: bool, unclocked: tuple[datetime, datetime]) -> None:
    """Fill the "shown → bought" numbers from the training's credits of the ``shown`` visits (``(id, ts,
    customer, shown_items, store)`` rows of the window, of ``stores`` only when given): every such visit counts;
    the purchase lines that credit nothing for an unknown clock are the training's own
    (:func:`~dangol_cloud.feedback_credit.sale_time_known`), and their stores are named (those of sales in
    ``unclocked``: the window on the clock of the stores without a zone of their own)."""
    if not shown:
        return
    result.stores_without_clock = stores_without_clock(session, timezone_set, stores, since=unclocked[0],
                                                       until=unclocked[1])
    visits = {v[0] for v in shown}
    credits = shown_pick_credits(session, result.since, result.until, stores=stores, timezone_set=timezone_set)
    credits = credits[credits["visit_id"].isin(visits)]
    result.shown_visits = len(visits)
    result.converted = int(credits["visit_id"].nunique())
    result.credits = len(credits)


def weekday_labels() -> list[str]:
    """``["Mon", ..., "Sun"]``."""
    return list(WEEKDAYS)
