"""Day-part aware menus: what a known customer buys at breakfast is not what they buy in the evening.

Day-parts (local hours): breakfast 05-10, lunch 11-13, afternoon 14-16, evening 17-04. A purchase line whose hour
is unknown (:data:`~dangol_cloud.recommend.data.NO_HOUR`: a date without a time, a sale of a store whose clock is
unknown) is in no day-part: the profile leaves it out (the history counts it).

A known customer's item score s(u, i) (the re-ranker logit, ≈ log P(buy)) is shifted by the log-ratio of how
much more often the item is bought in day-part d than the customer's visits are (Bayes' rule,
``P(i | u, d) ∝ P(i | u) P(d | u, i) / P(d | u)``):

``s_d(u, i) = s(u, i) + γ · [log q(d | u, i) - log q(d | u)]`` with

* ``q(d | i) = (n_i,d + 1) / (n_i + D)`` — the item's day-part profile over all customers (Laplace);
* ``q(d | u, i) = (n_u,i,d + k q(d | i)) / (n_u,i + k)`` — the customer's own, shrunk towards it (m-estimate,
  pseudo-count k);
* ``q(d | u) = (n_u,d + k q(d)) / (n_u + k)`` — the customer's visits by day-part, shrunk towards all visits.

Counts are baskets (distinct customer-day-day-part-item). γ and k are :class:`RecommenderConfig` settings
chosen on a validation split inside the training period (see its docstring).

The log-ratio is largest where the customer's own share of day-part d is near zero, so a pick it lifted says why
in words that are true (:meth:`DayPartProfile.reasons`): "you often have it at breakfast" only for a customer with
baskets of the item at breakfast, else "popular at breakfast" when the item sells at breakfast more than
baskets do (or nothing).

A menu item sold as several POS products (``item_group``) is counted in *baskets*, never in product lines: one
breakfast basket with a hot and an iced latte is one basket with the latte. Built with the grouping the training
uses (:func:`~dangol_cloud.recommend.history.item_groups`), the profile also counts distinct baskets per (customer,
day, day-part, menu item) (``group_counts``, ``group_item_counts``), and the reasons use those. A profile without them
(a model saved before they were kept) keeps baskets per product only, which bound the menu item's: at least the most
of any one of its products, at most their sum; its reasons then use that lower bound, so they never claim a habit or
a popularity the baskets do not show ("you have had it" where two baskets each held another of its products).
The score's adjustment (:meth:`DayPartProfile.adjustment`) stays per product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .history import pair_values

__all__ = ["DAYPARTS", "DAYPART_HOURS", "POPULAR_MIN_BASKETS", "DayPartProfile", "daypart_of"]

#: (name, first hour, last hour + 1) — evening wraps around midnight.
DAYPARTS: tuple[tuple[str, int, int], ...] = (("breakfast", 5, 11), ("lunch", 11, 14), ("afternoon", 14, 17),
                                              ("evening", 17, 29))
#: Baskets with an item in a day-part before it may be called "popular at" that day-part (one sale is not).
POPULAR_MIN_BASKETS = 3
#: A representative hour of each day-part (for asking :meth:`Recommender.recommend` for a day-part's menu).
DAYPART_HOURS: dict[str, int] = {"breakfast": 8, "lunch": 12, "afternoon": 15, "evening": 19}


def daypart_of(hours: np.ndarray | int) -> np.ndarray:
    """Day-part index (0-3, order of :data:`DAYPARTS`) of local hours 0-23 (int64 array of the same shape); -1 for
    a negative hour (:data:`~dangol_cloud.recommend.data.NO_HOUR`: unknown), which is in no day-part."""
    raw = np.asarray(hours, dtype=np.int64)
    h = raw % 24
    h = np.where(h < 5, h + 24, h)
    out = np.zeros(h.shape, dtype=np.int64)
    for k, (_, start, end) in enumerate(DAYPARTS):
        out[(h >= start) & (h < end)] = k
    return np.where(raw < 0, -1, out)


@dataclass
class DayPartProfile:
    """Basket counts by day-part.

    Attributes:
        counts: ``(n_dayparts * n_customers, n_items)`` float32 CSR; row ``d * n_customers + u`` holds customer
            u's baskets with the item in day-part d.
        visits: ``(n_customers, n_dayparts)`` float32, the customer's baskets per day-part.
        item_counts: ``(n_items, n_dayparts)`` float32, baskets with the item per day-part (all customers).
        n_customers: number of customers.
        item_group: ``(n_items,)`` int64 menu-item code of each item the group counts are kept by, or None.
        group_counts: ``(n_dayparts * n_customers, n_groups)`` float32 CSR, as ``counts`` for baskets with any item
            of the menu item (a basket holding two of its products counts once); None without ``item_group``.
        group_item_counts: ``(n_groups, n_dayparts)`` float32, baskets with the menu item per day-part (all
            customers); None without ``item_group``.
    """

    counts: sp.csr_matrix
    visits: np.ndarray
    item_counts: np.ndarray
    n_customers: int
    item_group: np.ndarray | None = None
    group_counts: sp.csr_matrix | None = None
    group_item_counts: np.ndarray | None = None

    @classmethod
    def build(cls, u: np.ndarray, i: np.ndarray, day: np.ndarray, hour: np.ndarray, shape: tuple[int, int],
              item_group: np.ndarray | None = None) -> DayPartProfile | None:
        """From ``(n_lines,)`` customer/item indices, days and local hours; ``shape`` is ``(n_customers,
        n_items)``; ``item_group``: ``(n_items,)`` int menu-item codes (:func:`~dangol_cloud.recommend.history.
        item_groups`; None: every item is its own menu item), whose baskets are then counted too. Lines whose
        hour is unknown (negative: :data:`~dangol_cloud.recommend.data.NO_HOUR`) are left out. None when the lines
        with a known hour all have the same one, or there are none (day-resolution data such as Ta-Feng has no
        time of day)."""
        hour = np.asarray(hour)
        timed = hour >= 0
        if len(np.unique(hour[timed])) <= 1:
            return None
        n_c, n_i = shape
        u, i, day, hour = np.asarray(u)[timed], np.asarray(i)[timed], np.asarray(day)[timed], hour[timed]
        d = daypart_of(hour)
        frame = pd.DataFrame({"u": u, "i": i, "day": day, "d": d}).drop_duplicates()
        counts, item_counts = _baskets(frame, "i", n_c, n_i)
        baskets = frame[["u", "day", "d"]].drop_duplicates()
        visits = np.zeros((n_c, len(DAYPARTS)), np.float32)
        np.add.at(visits, (baskets["u"].to_numpy(), baskets["d"].to_numpy()), 1.0)
        profile = cls(counts, visits, item_counts, n_c)
        if item_group is not None:
            group = np.asarray(item_group, dtype=np.int64)
            by_group = frame.assign(g=group[frame["i"].to_numpy()])[["u", "day", "d", "g"]].drop_duplicates()
            profile.item_group = group
            profile.group_counts, profile.group_item_counts = _baskets(by_group, "g", n_c, int(group.max()) + 1)
        return profile

    def adjustment(self, rows: np.ndarray, daypart: int, smoothing: float) -> np.ndarray:
        """``(len(rows), n_items)`` float64 ``log q(d | u, i) - log q(d | u)`` (module docstring) for day-part
        index ``daypart`` and pseudo-count ``smoothing`` (k); zeros for day-part -1 (an unknown hour: no shift)."""
        n_d = len(DAYPARTS)
        if daypart < 0:
            return np.zeros((len(rows), self.counts.shape[1]))
        item = self.item_counts.astype(np.float64)
        q_item = (item[:, daypart] + 1.0) / (item.sum(axis=1) + n_d)
        own_d = self.counts[daypart * self.n_customers + rows].toarray().astype(np.float64)
        own = np.zeros_like(own_d)
        for d in range(n_d):
            own += self.counts[d * self.n_customers + rows].toarray()
        q_ui = (own_d + smoothing * q_item[None, :]) / (own + smoothing)
        visits = self.visits[rows].astype(np.float64)
        overall = self.visits.sum(axis=0).astype(np.float64)
        q_d = (overall[daypart] + 1.0) / (overall.sum() + n_d)
        q_u = (visits[:, daypart] + smoothing * q_d) / (visits.sum(axis=1) + smoothing)
        return np.log(q_ui) - np.log(q_u)[:, None]

    def own_counts(self, rows: np.ndarray, cols: np.ndarray, daypart: int,
                   item_group: np.ndarray | None = None) -> np.ndarray:
        """``(n_pairs,)`` int64: customer ``rows[k]``'s baskets with item ``cols[k]`` in day-part ``daypart``, from
        the counts. With ``item_group`` (``(n_items,)`` menu-item codes), the baskets with any product of the same
        menu item: exact when the profile was built with that grouping (:attr:`group_counts`), else at least the
        most of any one of its products (a profile without them cannot tell whether two products' baskets were
        the same ones, so never more than it shows)."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        if item_group is not None and self._grouped_by(item_group):
            exact = pair_values(self.group_counts, daypart * self.n_customers + rows, self.item_group[cols])
            return np.rint(exact).astype(np.int64)
        block = self.counts[daypart * self.n_customers + rows].tocoo()  # (n_pairs, n_items)
        if item_group is None:
            same = block.col == cols[block.row]
            return np.rint(np.bincount(block.row[same], weights=block.data[same], minlength=len(rows))).astype(np.int64)
        same = item_group[block.col] == item_group[cols[block.row]]
        most = np.zeros(len(rows), dtype=np.float64)
        np.maximum.at(most, block.row[same], block.data[same])
        return np.rint(most).astype(np.int64)

    def _grouped_by(self, item_group: np.ndarray) -> bool:
        """True if the menu-item baskets were counted with this very grouping (same menu items, any codes)."""
        if self.item_group is None or self.group_counts is None or len(item_group) != len(self.item_group):
            return False
        pairs = np.unique(np.stack([np.asarray(item_group, dtype=np.int64), self.item_group]), axis=1)
        return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]

    def reasons(self, rows: np.ndarray, cols: np.ndarray, daypart: int, lift: np.ndarray,
                item_group: np.ndarray | None = None) -> list[str | None]:
        """The day-part reason of each pick (customer ``rows[k]``, item ``cols[k]``) at ``daypart``, or None.

        Only a pick the day-part lifted (``lift[k]``, its log-ratio, above log 1.5) gets one: "you often have it at
        <day-part>" when the customer had it then in at least two baskets, "you have had it at <day-part>" in
        one; with none, "popular at <day-part>" when the item's baskets fall in that day-part at least 1.5 times as
        often as all baskets do (both Laplace-smoothed as in :meth:`adjustment`; at least
        :data:`POPULAR_MIN_BASKETS` of them), else None. ``item_group`` counts the products sold as one menu item
        together, in baskets (:meth:`own_counts`): exactly with a profile built with that grouping; otherwise the
        customer's and the :data:`POPULAR_MIN_BASKETS` ones are the lower bound (the most of any one product), the
        day-part shares those of the products' baskets summed. Day-part -1 (an unknown hour): None for every pick."""
        if daypart < 0:
            return [None] * len(cols)
        name = DAYPARTS[daypart][0]
        own = self.own_counts(rows, cols, daypart, item_group)
        items = self.item_counts.astype(np.float64)
        baskets = items[:, daypart]
        if item_group is not None and self._grouped_by(item_group):  # the menu item's own baskets
            items = self.group_item_counts.astype(np.float64)[self.item_group]
            baskets = items[:, daypart]
        elif item_group is not None:  # a menu item sells as any of its products: bounds only
            grouped = np.zeros((int(item_group.max()) + 1, items.shape[1]))
            np.add.at(grouped, item_group, items)
            most = np.zeros(len(grouped))
            np.maximum.at(most, item_group, items[:, daypart])
            items, baskets = grouped[item_group], most[item_group]
        n_d = len(DAYPARTS)
        q_item = (items[:, daypart] + 1.0) / (items.sum(axis=1) + n_d)
        overall = self.visits.sum(axis=0).astype(np.float64)
        q_d = (overall[daypart] + 1.0) / (overall.sum() + n_d)
        popular = (baskets >= POPULAR_MIN_BASKETS) & (q_item >= 1.5 * q_d)
        out: list[str | None] = []
        for k, (col, value) in enumerate(zip(np.asarray(cols).tolist(), np.asarray(lift).tolist(), strict=True)):
            if not value > np.log(1.5):  # not bought 1.5 times as often at this day-part as on average
                out.append(None)
            elif own[k] >= 2:
                out.append(f"you often have it at {name}")
            elif own[k] == 1:
                out.append(f"you have had it at {name}")
            else:
                out.append(f"popular at {name}" if popular[col] else None)
        return out


def _baskets(frame: pd.DataFrame, column: str, n_customers: int, n_columns: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Count the rows of ``frame`` (columns ``u``, ``d`` and ``column``; one row per distinct basket) by customer
    and day-part, a ``(n_dayparts * n_customers, n_columns)`` float32 CSR (row ``d * n_customers + u``), and by
    day-part over all customers, a ``(n_columns, n_dayparts)`` float32 array."""
    rows = frame["d"].to_numpy() * n_customers + frame["u"].to_numpy()
    cols = frame[column].to_numpy()
    counts = sp.csr_matrix((np.ones(len(frame), np.float32), (rows, cols)), shape=(len(DAYPARTS) * n_customers,
                                                                                   n_columns))
    totals = np.zeros((n_columns, len(DAYPARTS)), np.float32)
    np.add.at(totals, (cols, frame["d"].to_numpy()), 1.0)
    return counts, totals
