"""Day-part aware menus: what a known customer buys at breakfast is not what they buy in the evening.

Day-parts (local hours): breakfast 05-10, lunch 11-13, afternoon 14-16, evening 17-04.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["DAYPARTS", "DAYPART_HOURS", "DayPartProfile", "daypart_of"]

#: (name, first hour, last hour + 1) — evening wraps around midnight.
DAYPARTS: tuple[tuple[str, int, int], ...] = (("breakfast", 5, 11), ("lunch", 11, 14), ("afternoon", 14, 17),
                                              ("evening", 17, 29))
#: A representative hour of each day-part (for asking :meth:`Recommender.recommend` for a day-part's menu).
DAYPART_HOURS: dict[str, int] = {"breakfast": 8, "lunch": 12, "afternoon": 15, "evening": 19}


def daypart_of(hours: np.ndarray | int) -> np.ndarray:
    """Day-part index (0-3, order of :data:`DAYPARTS`) of local hours 0-23 (int64 array of the same shape)."""
    h = np.asarray(hours, dtype=np.int64) % 24
    h = np.where(h < 5, h + 24, h)
    out = np.zeros(h.shape, dtype=np.int64)
    for k, (_, start, end) in enumerate(DAYPARTS):
        out[(h >= start) & (h < end)] = k
    return out


@dataclass
class DayPartProfile:
    """Basket counts by day-part.

    Attributes:
        counts: ``(n_dayparts * n_customers, n_items)`` float32 CSR; row ``d * n_customers + u`` holds customer
            u's baskets with the item in day-part d.
        visits: ``(n_customers, n_dayparts)`` float32, the customer's baskets per day-part.
        item_counts: ``(n_items, n_dayparts)`` float32, baskets with the item per day-part (all customers).
        n_customers: number of customers.
    """

    counts: sp.csr_matrix
    visits: np.ndarray
    item_counts: np.ndarray
    n_customers: int

    @classmethod
    def build(cls, u: np.ndarray, i: np.ndarray, day: np.ndarray, hour: np.ndarray,
              shape: tuple[int, int]) -> DayPartProfile | None:
        """From ``(n_lines,)`` customer/item indices, days and local hours; None when every line has the same
        hour (day-resolution data such as Ta-Feng has no time of day)."""
        if len(np.unique(hour)) <= 1:
            return None
        n_c, n_i = shape
        d = daypart_of(hour)
        frame = pd.DataFrame({"u": u, "i": i, "day": day, "d": d}).drop_duplicates()
        rows = frame["d"].to_numpy() * n_c + frame["u"].to_numpy()
        counts = sp.csr_matrix((np.ones(len(frame), np.float32), (rows, frame["i"].to_numpy())),
                               shape=(len(DAYPARTS) * n_c, n_i))
        baskets = frame[["u", "day", "d"]].drop_duplicates()
        visits = np.zeros((n_c, len(DAYPARTS)), np.float32)
        np.add.at(visits, (baskets["u"].to_numpy(), baskets["d"].to_numpy()), 1.0)
        item_counts = np.zeros((n_i, len(DAYPARTS)), np.float32)
        np.add.at(item_counts, (frame["i"].to_numpy(), frame["d"].to_numpy()), 1.0)
        return cls(counts, visits, item_counts, n_c)

    def adjustment(self, rows: np.ndarray, daypart: int, smoothing: float) -> np.ndarray:
        """``(len(rows), n_items)`` float64 ``log q(d | u, i) - log q(d | u)`` (module docstring) for day-part
        index ``daypart`` and pseudo-count ``smoothing`` (k)."""
        n_d = len(DAYPARTS)
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
