"""The bounds every sale meets however it arrives — a file import (``dangol-cloud import-purchases``), a dashboard
upload or the POS API — so that no path stores what another refuses.

* **Time**: from :data:`MIN_SALE_TS` to now + :data:`MAX_SALE_SKEW` (:func:`sale_time_error`). No till sends older
  sales (Ta-Feng is 2000-2001, Complete Journey 2017), and a time far outside would break what reads sales as
  pandas times (years before 1677 or after 2262), keep its customer "recent" for retention forever (a typo of 2205
  for 2025) or empty the analytics' default window.
* **Lengths**: ids and names that land in bounded columns: :data:`REF_MAX` (``catalogue_items.ref``,
  ``stores.ref``; a customer ref and a product id get the same limit as in the POS API) and :data:`CATEGORY_MAX`
  (``catalogue_items.category``). PostgreSQL refuses a longer value, and that failed the whole file.

The importers refuse a row outside them as one row error (:mod:`dangol_cloud.import_rows`,
:func:`dangol_cloud.ingest.import_rows`), the POS API with 422 (:mod:`dangol_cloud.web.api`). Purchases stored
before these bounds are skipped by training (:func:`dangol_cloud.training.load_frames`) and do not keep a
customer from retention (:func:`dangol_cloud.erasure.retention_candidates`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["CATEGORY_MAX", "MAX_SALE_SKEW", "MAX_ZONE_OFFSET", "MIN_SALE_TS", "REF_MAX", "latest_sale_ts",
           "sale_time_error"]

#: Earliest sale time accepted (no POS sends older sales; year-1 times cannot be shown in every time zone).
MIN_SALE_TS = datetime(1990, 1, 1, tzinfo=timezone.utc)
#: How far in the future a sale may be stamped (clock skew of the till), after which it is refused.
MAX_SALE_SKEW = timedelta(days=1)
#: The widest UTC offset of any time zone (UTC+14, Kiribati; the other way UTC−12): a naive local time checked
#: before its store's zone is known may be this far from UTC (the import checks it again in the zone).
MAX_ZONE_OFFSET = timedelta(hours=14)
#: Longest customer ref, item ref (= an imported item's name), product id or store ref.
REF_MAX = 64
#: Longest item category.
CATEGORY_MAX = 80


def latest_sale_ts(now: datetime | None = None) -> datetime:
    """The latest sale time accepted at ``now`` (default: the clock): ``now`` + :data:`MAX_SALE_SKEW`, aware UTC."""
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc) + MAX_SALE_SKEW


def sale_time_error(ts: datetime, now: datetime | None = None) -> str | None:
    """Why ``ts`` is no plausible sale time, or None if it is one.

    Args:
        ts: an aware time (checked exactly, in UTC), or a naive local time of a zone not known yet (accepted if
            it is plausible in some zone: the bounds widen by :data:`MAX_ZONE_OFFSET`).
        now: the clock (tests).

    Returns:
        None, or a phrase to follow the value in a message: "is before 1990-01-01", "is in the future (after
        …)", "cannot be expressed in UTC" (a year-1 or year-9999 time whose offset leaves the calendar).
    """
    latest = latest_sale_ts(now)
    earliest = MIN_SALE_TS
    if ts.tzinfo is None or ts.utcoffset() is None:
        utc = ts.replace(tzinfo=timezone.utc)
        earliest, latest_ok = earliest - MAX_ZONE_OFFSET, latest + MAX_ZONE_OFFSET
    else:
        try:
            utc = ts.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            return "cannot be expressed in UTC"
        latest_ok = latest
    if utc < earliest:
        return f"is before {MIN_SALE_TS:%Y-%m-%d}"
    if utc > latest_ok:
        return f"is in the future (after {latest:%Y-%m-%dT%H:%M:%SZ})"
    return None
