"""Numbers behind the analytics page (portable SQL + Python, same on SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dangol_cloud.models import CatalogueItem, Purchase, Visit

__all__ = ["Analytics", "compute"]

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


@dataclass
class Analytics:
    """Dashboard analytics over the window ``[since, until)``.

    Attributes:
        visits_by_hour: 24 counts (local hour 0-23); visits_by_weekday: 7 counts (Mon..Sun).
        recognised / unknown: arrivals with / without a recognised customer.
        top_items: ``[(item name, quantity)]`` best sellers in the window, at most 10.
        shown_visits: recognised visits where the display showed picks; converted: those of them where
            the customer bought at least one shown pick within ``conversion_hours`` after arriving.
    """

    since: datetime
    until: datetime
    visits_by_hour: list[int] = field(default_factory=lambda: [0] * 24)
    visits_by_weekday: list[int] = field(default_factory=lambda: [0] * 7)
    recognised: int = 0
    unknown: int = 0
    top_items: list[tuple[str, float]] = field(default_factory=list)
    shown_visits: int = 0
    converted: int = 0
    conversion_hours: int = 3

    @property
    def pick_rate(self) -> float | None:
        """Share of shown-pick visits that led to buying a shown pick (None if there were none)."""
        return self.converted / self.shown_visits if self.shown_visits else None


def compute(session: Session, *, tz: str, days: int = 90, now: datetime | None = None,
            conversion_hours: int = 3) -> Analytics:
    """Analytics for the last ``days`` days (up to ``now``), hours/weekdays in time zone ``tz``."""
    zone = ZoneInfo(tz)
    until = now or datetime.now(zone)
    since = until - timedelta(days=days)
    result = Analytics(since=since, until=until, conversion_hours=conversion_hours)
    visits = session.execute(select(Visit.ts, Visit.customer_id, Visit.shown_items)
                             .where(Visit.ts >= since, Visit.ts < until)).all()
    for ts, customer_id, _ in visits:
        local = ts.astimezone(zone)
        result.visits_by_hour[local.hour] += 1
        result.visits_by_weekday[local.weekday()] += 1
        if customer_id:
            result.recognised += 1
        else:
            result.unknown += 1
    top = session.execute(select(CatalogueItem.name, func.sum(Purchase.quantity).label("q"))
                          .join(CatalogueItem, CatalogueItem.id == Purchase.item_id)
                          .where(Purchase.ts >= since, Purchase.ts < until)
                          .group_by(CatalogueItem.id, CatalogueItem.name).order_by(func.sum(Purchase.quantity).desc())
                          .limit(10)).all()
    result.top_items = [(name, float(q)) for name, q in top]
    shown = [(ts, c, set(items)) for ts, c, items in visits if c and items]
    if shown:
        window = timedelta(hours=conversion_hours)
        customers = {c for _, c, _ in shown}
        bought: dict[str, list[tuple[datetime, str]]] = {}
        for cid, item, ts in session.execute(select(Purchase.customer_id, Purchase.item_id, Purchase.ts)
                                             .where(Purchase.customer_id.in_(customers), Purchase.ts >= since)):
            bought.setdefault(cid, []).append((ts, item))
        for ts, cid, items in shown:
            result.shown_visits += 1
            if any(ts <= pts <= ts + window and item in items for pts, item in bought.get(cid, [])):
                result.converted += 1
    return result


def weekday_labels() -> list[str]:
    """``["Mon", ..., "Sun"]``."""
    return list(WEEKDAYS)


