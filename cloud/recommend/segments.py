"""Cold start by customer segment: what customers of the same age group or area buy.

A segment value is a ``"<column>:<value>"`` string (e.g. Ta-Feng ``AGE_GROUP:35-39``, ``PIN_CODE:115``,
Complete Journey ``age:35-44``, ``income:50-74K``). For a customer without purchases but with recorded
segment values V, the cold-start shares are the mean over v in V of the segment's purchase shares, each
additively smoothed towards the store/hour popularity ``p_base`` (pseudo-count k, "m-estimate"):

``p(i | V) = (1/|V|) Σ_v (c_v,i + k p_base(i)) / (c_v + k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["SegmentTable", "segment_values"]


def segment_values(frame: pd.DataFrame | None) -> dict[str, list[str]]:
    """``{customer: ["<column>:<value>", ...]}`` from a frame with a ``customer`` column and segment columns
    (empty and NaN values skipped; the first row of a customer counts)."""
    if frame is None or len(frame) == 0:
        return {}
    table = frame.copy()
    table["customer"] = table["customer"].astype(str)
    table = table.drop_duplicates("customer").set_index("customer")
    out = {}
    for cust, rec in table.iterrows():
        out[str(cust)] = [f"{col}:{val}" for col, val in rec.items() if not pd.isna(val) and str(val).strip() != ""]
    return out


class SegmentTable:
    """Purchase-line counts per segment value.

    Attributes:
        values: segment value strings, row order of ``counts``.
        counts: ``(n_values, n_items)`` float32 CSR purchase lines of the customers holding each value.
    """

    def __init__(self, values: list[str], counts: sp.csr_matrix):
        self.values = values
        self.counts = counts.tocsr()
        lines = np.asarray(self.counts.sum(axis=1)).ravel()
        self._index = {v: k for k, v in enumerate(values) if lines[k] > 0}  # a value without purchases says nothing

    @classmethod
    def build(cls, u: np.ndarray, i: np.ndarray, customers: np.ndarray, segments: dict[str, list[str]],
              n_items: int) -> SegmentTable | None:
        """From ``(n_lines,)`` customer/item indices, the customer ids (index order) and their segment values;
        None when no customer has one."""
        values = sorted({v for c in customers for v in segments.get(str(c), [])})
        if not values:
            return None
        index = {v: k for k, v in enumerate(values)}
        rows, cols = [], []
        for c, cust in enumerate(customers):
            for v in segments.get(str(cust), []):
                rows.append(index[v])
                cols.append(c)
        member = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(values), len(customers)))
        lines = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(customers), n_items))
        return cls(values, (member @ lines).tocsr())

    def known(self, values: Sequence[str]) -> list[str]:
        """The ``values`` this table has purchase lines of (in their order, each once): the ones :meth:`shares` blends,
        and the only ones a reason may name."""
        return [v for v in dict.fromkeys(values) if v in self._index]

    def shares(self, values: Sequence[str], base: np.ndarray, smoothing: float) -> np.ndarray | None:
        """``(n_items,)`` float64 ``p(i | V)`` (module docstring) for the known ``values`` (:meth:`known`); None if
        none is known."""
        known = [self._index[v] for v in self.known(values)]
        if not known:
            return None
        counts = self.counts[known].toarray().astype(np.float64)
        return ((counts + smoothing * base[None, :]) / (counts.sum(axis=1, keepdims=True) + smoothing)).mean(axis=0)
