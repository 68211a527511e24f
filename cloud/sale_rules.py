"""The bounds every sale meets however it arrives — a file import (``dangol-cloud import-purchases``), a dashboard
upload or the POS API — so that no path stores what another refuses.

* **Time**: from :data:`MIN_SALE_TS` to now + :data:`MAX_SALE_SKEW` (:func:`sale_time_error`). No till sends older
  sales (Ta-Feng is 2000-2001, Complete Journey 2017), and a time far outside would break what reads sales as
  pandas times (years before 1677 or after 2262), keep its customer "recent" for retention forever (a typo of 2205
  for 2025) or empty the analytics' default window.
* **Lengths**: ids and names that land in bounded columns: :data:`REF_MAX` (``catalogue_items.ref``,
  ``stores.ref``; a customer ref and a product id get the same limit as in the POS API) and :data:`CATEGORY_MAX`
  (``catalogue_items.category``). PostgreSQL refuses a longer value, and that failed the whole file.
* **A line's quantity and amount** (:func:`quantity_error`, :func:`amount_error`): the amount (the line total) from 0
  to :data:`MAX_LINE_AMOUNT`, the quantity more than 0 and at most :data:`MAX_LINE_QUANTITY` (:data:`POS_LINE`: the
  POS API, Ta-Feng). A line of 1e30 made the analytics' revenue and an imported product's price 1e30, and a refund
  (a negative quantity or amount) lowered "units sold" and revenue. What a real export holds besides is kept: a plain
  CSV's lines of quantity 0 (:data:`CSV_LINE`: coupon and discount lines), and Complete Journey's
  (:data:`COMPLETE_JOURNEY_LINE`) coupon and miscellaneous lines of quantity 0 (2,188) and fuel counted in thousandths
  of a gallon (up to 32,603 in a line; 1,931 lines above :data:`MAX_LINE_QUANTITY`).
* **An amount's decimals** (:func:`amount_digits_error`): no more than its currency's minor unit has (4500.5 won or
  0.4 won cannot be paid; the customer page showed them rounded, the sums kept the fractions).

The importers refuse a row outside them as one row error naming the column (:mod:`dangol_cloud.import_rows`,
:func:`dangol_cloud.ingest.import_rows`), the POS API with 422 (:mod:`dangol_cloud.web.api`). Purchases stored
before these bounds are skipped by training (:func:`dangol_cloud.training.load_frames`) and do not keep a
customer from retention (:func:`dangol_cloud.erasure.retention_candidates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

__all__ = ["CATEGORY_MAX", "COMPLETE_JOURNEY_LINE", "CSV_LINE", "MAX_LINE_AMOUNT", "MAX_LINE_QUANTITY", "MAX_SALE_SKEW",
           "MAX_ZONE_OFFSET", "MIN_SALE_TS", "POS_LINE", "REF_MAX", "LineBounds", "amount_digits_error", "amount_error",
           "latest_sale_ts",
           "quantity_error", "sale_time_error"]

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
#: Largest line total accepted, in major units of the sale's currency (ten million: far above any café sale even in
#: KRW or JPY, far below what breaks sums and charts).
MAX_LINE_AMOUNT = 10_000_000
#: Most units in one sale line (a POS line, a plain CSV or Ta-Feng line; Ta-Feng's largest is 1,200).
MAX_LINE_QUANTITY = 10_000


@dataclass(frozen=True)
class LineBounds:
    """What a sale line's quantity may be in one kind of export: more than 0 (0 too with ``zero_quantity``) and at
    most ``max_quantity``."""

    max_quantity: int = MAX_LINE_QUANTITY
    zero_quantity: bool = False


#: The POS API's lines, and Ta-Feng's: more than 0, at most :data:`MAX_LINE_QUANTITY`.
POS_LINE = LineBounds()
#: A plain CSV export's lines: also 0, as a till's export lists coupon and discount lines (so do the Complete Journey
#: rows a plain CSV is tested with); 0 units add nothing to "units sold", and their amount is bounded as any.
CSV_LINE = LineBounds(zero_quantity=True)
#: Complete Journey's lines: coupon and miscellaneous lines of quantity 0, and fuel counted in thousandths of a gallon
#: (32,603 at most in the data set; up to a 100-gallon fill).
COMPLETE_JOURNEY_LINE = LineBounds(max_quantity=100_000, zero_quantity=True)


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


def quantity_error(quantity: float, bounds: LineBounds = POS_LINE) -> str | None:
    """Why ``quantity`` (finite) is no quantity of a sale line under ``bounds``, or None if it is one: a phrase to
    follow the value in a message ("must be more than 0", "is more than 10,000, the most one sale line may hold")."""
    if quantity < 0 or (quantity == 0 and not bounds.zero_quantity):
        return f"must be {'0 or more' if bounds.zero_quantity else 'more than 0'} (a sale line, not a return)"
    if quantity > bounds.max_quantity:
        return f"is more than {bounds.max_quantity:,}, the most one sale line may hold"
    return None


def amount_error(amount: float) -> str | None:
    """Why ``amount`` (finite) is no line total, or None if it is one (0 to :data:`MAX_LINE_AMOUNT`): a phrase to
    follow the value in a message."""
    if amount < 0:
        return "is less than 0 (a sale line, not a refund)"
    if amount > MAX_LINE_AMOUNT:
        return f"is more than {MAX_LINE_AMOUNT:,}, the most one sale line may total"
    return None


#: Relative slack of :func:`amount_digits_error` (binary float noise of a parsed or summed amount is ~1e-16 relative;
#: 1e-12 leaves room for a few roundings yet still refuses 9,999,999.995 USD).
_DIGITS_REL_TOL = 1e-12
#: Absolute slack of :func:`amount_digits_error`, in minor units (for amounts near 0).
_DIGITS_ABS_TOL = 1e-9


def amount_digits_error(amount: float, currency: str) -> str | None:
    """Why ``amount`` has more decimals than ``currency`` uses, or None if it has no more.

    Args:
        amount: a line total in major units of ``currency`` (``4.5`` dollars, not 450 cents). Binary float noise is
            tolerated: 2.99 USD and ``0.1 + 0.2`` USD pass (``amount * 10**digits`` within ~1e-12 relative of a
            whole number).
        currency: an ISO 4217 code; its decimals are :func:`dangol_cloud.store_prices.currency_digits` (KRW and
            JPY 0, USD and EUR 2, BHD 3; 2 for a code babel does not list).

    Returns:
        None, or a sentence naming the amount and the currency: "4500.5 has more decimals than KRW uses (0)"
        ("… is not a finite amount" for ``inf`` or ``nan``). The callers (the POS API, the file importers) name
        the field or column before it.
    """
    from dangol_cloud.store_prices import currency_digits

    if not math.isfinite(amount):
        return f"{amount} is not a finite amount"
    digits = currency_digits(currency)
    scaled = amount * 10 ** digits
    if math.isclose(scaled, round(scaled), rel_tol=_DIGITS_REL_TOL, abs_tol=_DIGITS_ABS_TOL):
        return None
    shown = format(Decimal(repr(float(amount))), "f")
    return f"{shown} has more decimals than {currency} uses ({digits})"
