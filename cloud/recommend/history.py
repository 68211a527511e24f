"""Purchase statistics per (customer, item) and per item, at a reference day.

A *visit* is a distinct calendar day on which a customer bought something (Ta-Feng has day resolution;
a café customer rarely comes twice a day). Recency weights decay exponentially with half-life h days:
``w = 0.5 ** (age_days / h)`` where ``age_days = ref_day - purchase_day`` (>= 1 for purchases before ref_day).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .baselines import TifuKnn


@dataclass
class History:
    """Statistics of the purchases before ``ref_day``.

    Attributes:
        ref_day: reference day (int, days since 1970-01-01); ages are measured from it.
        visits_with_item: ``(n_customers, n_items)`` float32 CSR, number of visits on which the item was bought.
        lines: ``(n_customers, n_items)`` float32 CSR, number of purchase lines (the own-frequency baseline).
        decayed: ``(n_customers, n_items)`` float32 CSR, sum over those visits of ``0.5 ** (age / h)``.
        recency: ``(n_customers, n_items)`` float32 CSR, ``0.5 ** (age_of_last_purchase / h)``.
        visits: ``(n_customers,)`` float32, visits per customer.
        item_buyers: ``(n_items,)`` float32, distinct customers who bought the item.
        item_repeaters: ``(n_items,)`` float32, customers who bought the item on >= 2 visits.
        item_lines: ``(n_items,)`` float32, purchase lines per item (global popularity).
        tifu: TIFU-KNN customer vectors and neighbours (:class:`~.baselines.TifuKnn`), or None.
        item_recent: ``(n_items,)`` float32, purchase lines per item in the last :data:`TREND_DAYS` days.
        ignored: ``(n_customers, n_items)`` float32 CSR, picks shown to the customer and not bought (feedback),
            each weighted ``0.5 ** (age / h)`` like ``decayed``; None without such feedback.
        item_group: ``(n_items,)`` int64 menu-item code of each item (:func:`item_groups`: POS products sold as
            the same menu item share one), or None when every item is its own menu item.
        group_visits: ``(n_customers, n_groups)`` float32 CSR, number of visits on which the customer bought
            any item of the menu item (group); None without ``item_group``.
    """

    ref_day: int
    visits_with_item: sp.csr_matrix
    lines: sp.csr_matrix
    decayed: sp.csr_matrix
    recency: sp.csr_matrix
    visits: np.ndarray
    item_buyers: np.ndarray
    item_repeaters: np.ndarray
    item_lines: np.ndarray
    tifu: TifuKnn | None = None
    item_recent: np.ndarray | None = None
    ignored: sp.csr_matrix | None = None
    item_group: np.ndarray | None = None
    group_visits: sp.csr_matrix | None = None

    def menu_item_visits(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(n_pairs,)`` int64: on how many visits customer ``rows[k]`` bought item ``cols[k]`` or any other
        item sold as the same menu item (the k of "you often buy this (k of your N visits)")."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        if self.item_group is None or self.group_visits is None:
            return np.rint(pair_values(self.visits_with_item, rows, cols)).astype(np.int64)
        return np.rint(pair_values(self.group_visits, rows, self.item_group[cols])).astype(np.int64)

    def sold(self) -> np.ndarray:
        """``(n_items,)`` bool: someone bought the item, or an item sold as the same menu item (a menu item's
        sales are recorded against its POS products)."""
        lines = np.asarray(self.item_lines, dtype=np.float64)
        if self.item_group is not None:
            lines = np.bincount(self.item_group, weights=lines)[self.item_group]
        return lines > 0

    def item_trend(self) -> np.ndarray:
        """``(n_items,)`` float64 log ratio of the item's share of the last :data:`TREND_DAYS` days' purchase lines
        to its share of all lines (Laplace-smoothed: +1 per item); 0 without recent counts."""
        if self.item_recent is None:
            return np.zeros(len(self.item_lines))
        recent, total = self.item_recent.astype(np.float64), self.item_lines.astype(np.float64)
        n = len(total)
        return np.log((recent + 1) / (recent.sum() + n)) - np.log((total + 1) / (total.sum() + n))


TREND_DAYS = 14  # window of the item trend feature (two weeks: both weekends, paydays)


def build_history(u: np.ndarray, i: np.ndarray, day: np.ndarray, shape: tuple[int, int], ref_day: int,
                  half_life: float) -> History:
    """Aggregate purchase lines into a :class:`History`.

    Args:
        u, i: ``(n_lines,)`` int customer and item indices; day: ``(n_lines,)`` int64 days since epoch.
        shape: ``(n_customers, n_items)``.
        ref_day: reference day; every ``day`` must be < ref_day.
        half_life: recency half-life in days.
    """
    n_c = shape[0]
    lines = sp.coo_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape).tocsr()
    frame = pd.DataFrame({"u": u, "i": i, "day": day}).drop_duplicates()
    fu, fi = frame["u"].to_numpy(), frame["i"].to_numpy()
    age = (ref_day - frame["day"].to_numpy()).astype(np.float64)
    w = np.power(0.5, age / half_life).astype(np.float32)
    visits_with_item = sp.coo_matrix((np.ones(len(fu), np.float32), (fu, fi)), shape=shape).tocsr()
    decayed = sp.coo_matrix((w, (fu, fi)), shape=shape).tocsr()
    last = frame.assign(w=w).groupby(["u", "i"], sort=True)["w"].max()
    recency = sp.csr_matrix(
        (last.to_numpy(np.float32), (last.index.get_level_values(0), last.index.get_level_values(1))), shape=shape
    )
    visit_days = pd.DataFrame({"u": u, "day": day}).drop_duplicates()
    visits = np.bincount(visit_days["u"].to_numpy(), minlength=n_c).astype(np.float32)
    item_buyers = np.diff(visits_with_item.tocsc().indptr).astype(np.float32)
    repeat = visits_with_item.copy()
    repeat.data = (repeat.data >= 2).astype(np.float32)
    item_repeaters = np.asarray(repeat.sum(axis=0)).ravel().astype(np.float32)
    item_lines = np.asarray(lines.sum(axis=0)).ravel().astype(np.float32)
    item_recent = np.bincount(i[day >= ref_day - TREND_DAYS], minlength=shape[1]).astype(np.float32)
    return History(ref_day, visits_with_item, lines, decayed, recency, visits, item_buyers, item_repeaters,
                   item_lines, item_recent=item_recent)


def item_groups(items: np.ndarray, menu_item_of: Mapping[str, str | None] | None) -> np.ndarray | None:
    """Menu-item codes of catalogue items: ``(n_items,)`` int64, equal for items sold as the same menu item.

    Args:
        items: ``(n_items,)`` str item ids (products and menu items alike).
        menu_item_of: ``{item id: id of the menu item it is sold as}`` (e.g.
            :func:`dangol_cloud.menu_mapping.menu_item_map`); an item absent from it, or mapped to None (a
            product not on the menu), is its own menu item. The menu item itself need not be in ``items``.

    Returns:
        The codes, or None when every item is its own menu item (nothing to group).
    """
    if not menu_item_of:
        return None
    keys = [menu_item_of.get(str(item)) or str(item) for item in items]
    codes = pd.factorize(pd.Index(keys, dtype=object))[0].astype(np.int64)
    return codes if len(codes) and codes.max() + 1 < len(codes) else None


def group_visit_counts(u: np.ndarray, i: np.ndarray, day: np.ndarray, group: np.ndarray,
                       n_customers: int) -> sp.csr_matrix:
    """``(n_customers, n_groups)`` float32 CSR: distinct days on which each customer bought any item of each
    group, from ``(n_lines,)`` customer/item indices and days and the items' ``(n_items,)`` group codes."""
    frame = pd.DataFrame({"u": u, "g": group[i], "day": day}).drop_duplicates()
    n_groups = int(group.max()) + 1 if len(group) else 0
    m = sp.coo_matrix((np.ones(len(frame), np.float32), (frame["u"].to_numpy(), frame["g"].to_numpy())),
                      shape=(n_customers, n_groups)).tocsr()
    m.sum_duplicates()
    return m


def decayed_counts(u: np.ndarray, i: np.ndarray, day: np.ndarray, shape: tuple[int, int], ref_day: int,
                   half_life: float) -> sp.csr_matrix | None:
    """``(n_customers, n_items)`` float32 CSR ``Σ 0.5 ** ((ref_day - day) / half_life)`` over the events
    ``(u, i, day)`` before ``ref_day`` (e.g. shown-and-ignored picks); None when there are none."""
    keep = day < ref_day
    if not keep.any():
        return None
    w = np.power(0.5, (ref_day - day[keep]) / half_life).astype(np.float32)
    m = sp.coo_matrix((w, (u[keep], i[keep])), shape=shape).tocsr()
    m.sum_duplicates()
    return m


def pair_values(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows[k], cols[k]]`` for every k as a float64 ``(n_pairs,)`` array (0 where not stored)."""
    if len(rows) == 0:
        return np.zeros(0)
    return np.asarray(m[rows, cols]).ravel().astype(np.float64)


#: Rows per store block of :attr:`PopularityTable.counts`: hours 0-23, then :data:`HOURLESS`.
BLOCK_ROWS = 25
#: The row (within a store block) of the lines whose hour of day is unknown.
HOURLESS = 24


class PopularityTable:
    """Cold-start popularity per (store, hour of day), smoothed towards coarser levels.

    Counts purchase lines. The share of item i at store s and hour h is additively smoothed
    (pseudo-count k, "m-estimate" / Bayesian average):
    ``p(i | s) = (c_s,i + k p(i)) / (c_s + k)`` and ``p(i | s, h) = (c_s,h±1,i + k p(i | s)) / (c_s,h±1 + k)``,
    where ``h±1`` is the three-hour window centred on h (neighbouring hours wrap around midnight).
    A line whose hour is unknown (:data:`~dangol_cloud.recommend.data.NO_HOUR`) counts in ``c_s`` and ``c`` only,
    never in an hour's window. Hours are ignored when the lines with a known hour all have the same one, or there
    are none (day-resolution data such as Ta-Feng).

    Attributes:
        stores: store ids, row block s of ``counts`` (block 0 = all stores, id "").
        counts: ``(n_stores_plus_1 * 25, n_items)`` float32 CSR of line counts per (store block, hour): rows
            ``25 s + h`` for hours 0-23, ``25 s + 24`` (:data:`HOURLESS`) for the lines without an hour. A model
            saved before that row was kept has 24 rows per block (:attr:`rows_per_block`).
        has_hours: whether the data has time-of-day information.
    """

    def __init__(self, stores: list[str], counts: sp.csr_matrix, has_hours: bool, smoothing: float):
        self.stores = stores
        self.counts = counts.tocsr()
        self.has_hours = has_hours
        self.smoothing = smoothing
        self._store_index = {s: k for k, s in enumerate(stores)}
        #: rows per store block: 25 (hours, then :data:`HOURLESS`), or 24 for a model saved before.
        self.rows_per_block = self.counts.shape[0] // max(len(stores), 1)

    @classmethod
    def build(cls, i: np.ndarray, hour: np.ndarray, store: np.ndarray | None, n_items: int,
              smoothing: float) -> PopularityTable:
        """From ``(n_lines,)`` item indices, hours (0-23, or negative where unknown:
        :data:`~dangol_cloud.recommend.data.NO_HOUR`) and optional store ids (str)."""
        stores = [""]
        block = np.zeros(len(i), dtype=np.int64)
        if store is not None:
            named = sorted({s for s in store if s})
            stores += named
            index = {s: k + 1 for k, s in enumerate(named)}
            block = np.array([index.get(s, 0) for s in store], dtype=np.int64)
        hour = np.asarray(hour, dtype=np.int64)
        row = np.where(hour >= 0, hour % 24, HOURLESS)
        rows = np.concatenate([row, block[block > 0] * BLOCK_ROWS + row[block > 0]])
        cols = np.concatenate([i, i[block > 0]])
        counts = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(len(stores) * BLOCK_ROWS, n_items))
        has_hours = len(np.unique(hour[hour >= 0])) > 1
        return cls(stores, counts.tocsr(), has_hours, smoothing)

    def _block(self, s: int, hours: list[int] | None) -> np.ndarray:
        """``(n_items,)`` float64 line counts of store block ``s`` in the ``hours`` (None: every line)."""
        rows = (range(s * self.rows_per_block, (s + 1) * self.rows_per_block) if hours is None
                else [s * self.rows_per_block + h % 24 for h in hours])
        return np.asarray(self.counts[list(rows)].sum(axis=0)).ravel().astype(np.float64)

    @staticmethod
    def _smooth(counts: np.ndarray, prior: np.ndarray, k: float) -> np.ndarray:
        return (counts + k * prior) / (counts.sum() + k)

    def shares(self, store: str | None = None, hour: int | None = None) -> tuple[np.ndarray, str]:
        """``(n_items,)`` float64 smoothed purchase shares, and the reason text for the cold-start list."""
        n_items = self.counts.shape[1]
        total = self._block(0, None)
        overall = (total + 1.0) / (total.sum() + n_items)  # Laplace: items never sold keep a tiny share
        reason = "popular with our customers"
        s = self._store_index.get(store or "", 0)
        base = overall
        if s:
            base = self._smooth(self._block(s, None), overall, self.smoothing)
            reason = "popular at this store"
        if hour is not None and hour >= 0 and self.has_hours:
            base = self._smooth(self._block(s, [hour - 1, hour, hour + 1]), base, self.smoothing)
            reason = "popular at this time of day" + (" at this store" if s else "")
        return base, reason
