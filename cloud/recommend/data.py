"""Input frames of the recommender: validation, and building them from the importers' rows.

Interactions: one row per purchase line, columns ``customer`` (str), ``item`` (str), ``ts``
(datetime64[ns]) and ``quantity`` (float); an optional ``store`` (str) column feeds the cold-start
popularity per store; an optional ``kind`` (str, :data:`KINDS`) column tells purchase lines (``"purchase"``,
the default, also for a missing value) from feedback rows (``"feedback"``: a like, a shown pick bought), which
are extra positive interactions for the factor model and the re-ranker's labels but no purchases: they stay out
of the purchase history, the day-part profile, the cold-start popularity and the reasons.

Hour of day: a purchase line's local hour is *unknown* (``hour`` :data:`NO_HOUR` after :func:`clean_interactions`)
when the optional bool column ``timed`` says False (a missing value: True) or when its ``ts`` is exactly 00:00:00
(a date without a time of day: :func:`line_hours`). Such a line counts in the history (visits, frequencies,
recency, the cold-start popularity without an hour) but not in the day-part profile
(:class:`~dangol_cloud.recommend.dayparts.DayPartProfile`), the hourly cold-start popularity
(:class:`~dangol_cloud.recommend.history.PopularityTable`) or the day-part reasons. The database's ``timed``:
:func:`dangol_cloud.training.load_frames` (a POS sale of a store whose zone is unknown).

Items: one row per menu item, columns ``item`` (str), ``category`` (str or None), ``price`` (float,
NaN if unknown), ``tags`` (list[str]) and ``available`` (bool).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ..importers import DATASET_TIMEZONES, PurchaseRow, RowError, parse_purchases

INTERACTION_COLUMNS = ("customer", "item", "ts", "quantity")
#: Values of the interactions' optional ``kind`` column.
KINDS = ("purchase", "feedback")
ITEM_COLUMNS = ("item", "category", "price", "tags", "available")
#: ``hour`` of a purchase line whose local hour of day is unknown (module docstring; ``daypart_of`` gives it -1).
NO_HOUR = -1


def line_hours(ts: pd.Series, timed: pd.Series | None = None) -> np.ndarray:
    """Each purchase line's local hour of day, or :data:`NO_HOUR` where it is unknown: ``(n,)`` int8.

    Args:
        ts: ``(n,)`` naive local times (datetime64[ns]).
        timed: ``(n,)`` bool, False where the line's clock is unknown (:func:`dangol_cloud.training.load_frames`);
            a missing value, or no column at all, is True.

    A time of exactly 00:00:00 (to the nanosecond) is a date without a time of day: the purchases table keeps no
    flag saying whether a file gave a time, and the date-only exports (Ta-Feng, a CSV of ``YYYY-MM-DD``,
    :mod:`dangol_cloud.importers`) give every line that midnight, local. A real sale rung up at exactly midnight to
    the second loses only its day-part (it still counts in the history); without the rule, a date-only history
    beside timed sales made every one of its baskets an evening one (00 h is in the evening day-part).
    """
    ts = pd.to_datetime(ts)
    known = (ts != ts.dt.normalize()).to_numpy()
    if timed is not None:
        known &= timed.astype(object).where(timed.notna(), True).astype(bool).to_numpy()
    return np.where(known, ts.dt.hour.to_numpy(), NO_HOUR).astype(np.int8)


def clean_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Validate and normalise an interactions frame (copy).

    Drops rows with quantity <= 0 (returns, coupon lines) or a missing customer/item/ts; casts ids to
    str and ``ts`` to datetime64[ns]; adds ``day`` (int64, days since 1970-01-01), ``hour`` (int8, 0-23, or
    :data:`NO_HOUR` where unknown: :func:`line_hours` of ``ts`` and the optional ``timed`` column, which is then
    dropped) and ``kind`` (str, ``"purchase"`` where the column is missing or empty, see the module docstring).

    Raises:
        ValueError: if a required column is missing, or a ``kind`` is not one of :data:`KINDS`.
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions lack column(s) {', '.join(missing)}")
    cols = list(INTERACTION_COLUMNS) + [c for c in ("store", "kind", "timed") if c in interactions.columns]
    df = interactions[cols].dropna(subset=["customer", "item", "ts"]).copy()
    df["kind"] = df["kind"].astype(object).where(df["kind"].notna(), KINDS[0]) if "kind" in df else KINDS[0]
    bad = sorted(set(df["kind"].astype(str)) - set(KINDS))
    if bad:
        raise ValueError(f"interactions: kind {', '.join(map(repr, bad))}: must be one of {', '.join(KINDS)}")
    df["customer"] = df["customer"].astype(str)
    df["item"] = df["item"].astype(str)
    df["ts"] = pd.to_datetime(df["ts"])
    df["quantity"] = pd.to_numeric(df["quantity"], errors="coerce").astype(float)
    df = df[df["quantity"] > 0]
    if "store" in df.columns:
        df["store"] = df["store"].astype("string").fillna("")
    df["day"] = (df["ts"].values.astype("datetime64[D]").astype(np.int64)).astype(np.int64)
    df["hour"] = line_hours(df["ts"], df.pop("timed") if "timed" in df.columns else None)
    return df.reset_index(drop=True)


def clean_items(items: pd.DataFrame | None, interactions: pd.DataFrame) -> pd.DataFrame:
    """Validate the items frame and add every item that occurs in ``interactions`` but not in it.

    Missing optional columns get defaults (category None, price NaN, tags [], available True).
    Returns a frame sorted by ``item`` (str) with a unique ``item`` per row.
    """
    known = pd.DataFrame(columns=list(ITEM_COLUMNS)) if items is None else items.copy()
    if "item" not in known.columns:
        raise ValueError("items lack column 'item'")
    known["item"] = known["item"].astype(str)
    extra = sorted(set(interactions["item"].unique()) - set(known["item"]))
    if extra:
        known = pd.concat([known, pd.DataFrame({"item": extra})], ignore_index=True)
    if "category" not in known.columns:
        known["category"] = None
    known["category"] = pd.Series(
        [None if c is None or (not isinstance(c, str) and pd.isna(c)) or c == "" else str(c) for c in known["category"]],
        index=known.index, dtype=object,
    )
    known["price"] = pd.to_numeric(known["price"], errors="coerce") if "price" in known else np.nan
    if "tags" not in known.columns:
        known["tags"] = [[] for _ in range(len(known))]
    known["tags"] = known["tags"].map(lambda t: [str(x) for x in t] if isinstance(t, (list, tuple, set)) else [])
    # a missing value (None, NaN, pd.NA: an item added above, or left blank) is available; filled while converting
    # to numpy, not by fillna on an object column (pandas deprecates that downcast); others keep Python truth
    known["available"] = (known["available"].to_numpy(dtype=object, na_value=True).astype(bool)
                          if "available" in known else True)
    known = known.drop_duplicates("item", keep="first").sort_values("item", kind="stable")
    return known[list(ITEM_COLUMNS)].reset_index(drop=True)


def frames_from_rows(rows: Iterable[PurchaseRow | RowError], tz: str = "UTC") -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Build (interactions, items, n_errors) from :func:`dangol_cloud.importers.parse_purchases` output.

    ``ts`` is naive local time: a row's aware time (e.g. Complete Journey's UTC) is converted to the IANA zone
    ``tz`` first, a naive one is kept as written (it is local already), as the cloud's import does.

    Items get the row's ``category``, ``price`` = median unit price (amount / quantity) over the rows
    that give one, no tags, and ``available`` True. Row errors are counted and skipped.
    Interactions carry a ``store`` column when any row has a store, and each line's ``unit`` price (NaN if
    unknown), from which :func:`~dangol_cloud.recommend.evaluate.evaluate` prices items before its cut.
    """
    cust, item, ts, qty, store, cat, unit = [], [], [], [], [], [], []
    errors = 0
    zone = ZoneInfo(tz)
    for row in rows:
        if isinstance(row, RowError):
            errors += 1
            continue
        cust.append(row.customer_ref)
        item.append(row.item_ref)
        ts.append(row.ts if row.ts.tzinfo is None else row.ts.astimezone(zone).replace(tzinfo=None))
        qty.append(row.quantity)
        store.append(row.store_ref)
        cat.append(row.category)
        unit.append(row.amount / row.quantity if row.amount is not None and row.quantity > 0 else np.nan)
    inter = pd.DataFrame({"customer": cust, "item": item, "ts": pd.to_datetime(ts), "quantity": qty, "unit": unit})
    if any(s is not None for s in store):
        inter["store"] = store
    meta = pd.DataFrame({"item": item, "category": cat, "unit": unit})
    items = meta.groupby("item", sort=True).agg(
        category=("category", "first"), price=("unit", "median")
    ).reset_index()
    items["tags"] = [[] for _ in range(len(items))]
    items["available"] = True
    return inter, items, errors


def load_purchases(path: str | Path, fmt: str, tz: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """``frames_from_rows(parse_purchases(path, fmt), tz)``: a data file straight to recommender frames, in the
    shops' local time ``tz`` (default: the data set's, :data:`dangol_cloud.importers.DATASET_TIMEZONES`, else UTC).
    """
    return frames_from_rows(parse_purchases(path, fmt), tz or DATASET_TIMEZONES.get(fmt, "UTC"))  # type: ignore[arg-type]


def catalogue_before(interactions: pd.DataFrame, items: pd.DataFrame | None, cut) -> pd.DataFrame:
    """The catalogue as it stood at ``cut``, for an offline evaluation: the items sold before it (an item first
    sold after the cut was not on the menu yet as far as the data tells: no real catalogue says when items
    arrived), priced by the median ``unit`` price of their lines before it when ``interactions`` has a ``unit``
    column (else the items' own price). Returns a frame like :func:`clean_items`."""
    sold = pd.to_numeric(interactions["quantity"], errors="coerce") > 0  # as clean_interactions: no returns
    before = interactions[sold & (pd.to_datetime(interactions["ts"]) < pd.Timestamp(cut))].assign(
        item=lambda f: f["item"].astype(str))
    catalogue = clean_items(items, before)
    catalogue = catalogue[catalogue["item"].isin(set(before["item"]))].reset_index(drop=True)
    if "unit" in before.columns:
        unit = pd.to_numeric(before["unit"], errors="coerce")
        median = unit.groupby(before["item"]).median()
        catalogue["price"] = catalogue["item"].map(median).astype(float)
    return catalogue


def restrict_to_top_items(interactions: pd.DataFrame, items: pd.DataFrame, n: int, *, before=None):
    """Keep only the ``n`` most sold items (by number of purchase lines, counted before ``before`` if given).

    Returns ``(interactions, items)`` filtered to those items (a menu-sized catalogue).
    """
    counted = interactions if before is None else interactions[interactions["ts"] < pd.Timestamp(before)]
    counts = counted["item"].astype(str).value_counts()
    top = set(counts.sort_index().sort_values(ascending=False, kind="stable").index[:n])
    return (
        interactions[interactions["item"].astype(str).isin(top)].reset_index(drop=True),
        items[items["item"].astype(str).isin(top)].reset_index(drop=True),
    )


def load_segments(path: str | Path, fmt: str) -> pd.DataFrame:
    """Customer segments of a data set: ``customer`` + segment columns, one row per customer.

    ``ta-feng``: ``AGE_GROUP`` and ``PIN_CODE`` of the transactions file (first row per customer);
    ``completejourney``: ``demographics.csv`` beside ``transactions.csv`` (age, income, home ownership,
    marital status, household size and composition, kids), for the households that have a row.

    Raises:
        ValueError: for another ``fmt``.
    """
    path = Path(path)
    if fmt == "ta-feng":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["CUSTOMER_ID", "AGE_GROUP", "PIN_CODE"])
        return frame.drop_duplicates("CUSTOMER_ID").rename(columns={"CUSTOMER_ID": "customer"}).reset_index(drop=True)
    if fmt == "completejourney":
        frame = pd.read_csv(path.parent / "demographics.csv", dtype=str, keep_default_na=False)
        return frame.rename(columns={"household_id": "customer"}).drop_duplicates("customer").reset_index(drop=True)
    raise ValueError(f"no customer segments for format {fmt!r}")
