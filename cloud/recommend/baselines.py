"""Published next-basket baselines: GP-TopFreq, TIFU-KNN and implicit ALS.

A *basket* is a visit: the distinct (customer, day) pairs of the purchase lines, as in :mod:`.history`
(Ta-Feng has day resolution; a café regular rarely comes twice a day).

* **GP-TopFreq** (Li, Jullien, Ariannezhad & de Rijke 2023, "A Next Basket Recommendation Reality Check",
  ACM TOIS 41(4), §3): the customer's items ranked by the number of baskets that hold them (P-TopFreq),
  the rest of the list filled by global popularity (G-TopFreq, baskets that hold the item).
* **TIFU-KNN** (Hu, He, Hu, Sun & Yang 2020, "Modeling Personalized Item Frequency Information for
  Next-basket Recommendation", SIGIR, §4): the customer's baskets (multi-hot rows ``b``), oldest first, are
  cut into groups of ``m`` consecutive baskets counted back from the most recent one (the oldest group holds
  the remainder). Group vector ``g = (1/|G|) Σ_{j=1..|G|} r_b^(|G|-j) b_j``; customer vector
  ``u = (1/K) Σ_{i=1..K} r_g^(K-i) g_i`` (K groups, the newest has i = K). Prediction
  ``p = α u + (1-α) mean(u_v for the k nearest other customers v)`` (Euclidean distance between the u
  vectors, as the authors' code's ``NearestNeighbors``). Hyper-parameters are chosen by
  :func:`tune_tifu_knn` on a split inside the training data.
* **implicit ALS** (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback Datasets",
  ICDM) from the ``implicit`` package on the basket counts; already-bought items are kept (repeat purchases
  are the strongest signal in grocery data).

Every scorer returns a dense ``(n_customers, n_items)`` float64 matrix, higher = better; lists are cut by
:func:`top_k`, which breaks ties by global popularity.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["Baskets", "TifuKnn", "TifuParams", "ValidationSplit", "als_scores", "basket_counts", "gp_top_freq",
           "popularity_tie", "precision_at_k", "top_k", "tune_als", "tune_tifu_knn", "validation_split"]


@dataclass
class Baskets:
    """Purchase lines grouped into baskets (distinct customer-days).

    Attributes:
        customer: ``(n_baskets,)`` int64 customer index, sorted by (customer, day).
        day: ``(n_baskets,)`` int64 day (days since 1970-01-01).
        items: ``(n_baskets, n_items)`` float32 CSR multi-hot (1 if the basket holds the item).
        n_customers: number of customer rows.
    """

    customer: np.ndarray
    day: np.ndarray
    items: sp.csr_matrix
    n_customers: int

    @classmethod
    def build(cls, u: np.ndarray, i: np.ndarray, day: np.ndarray, shape: tuple[int, int]) -> Baskets:
        """From ``(n_lines,)`` customer indices ``u``, item indices ``i`` and days; ``shape`` = (customers, items)."""
        frame = pd.DataFrame({"u": u, "d": day, "i": i}).drop_duplicates()
        keys = frame[["u", "d"]].drop_duplicates().sort_values(["u", "d"]).reset_index(drop=True)
        row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(frame[["u", "d"]]))
        items = sp.csr_matrix((np.ones(len(frame), np.float32), (row, frame["i"].to_numpy())),
                              shape=(len(keys), shape[1]))
        return cls(keys["u"].to_numpy(np.int64), keys["d"].to_numpy(np.int64), items, shape[0])

    def per_customer(self, weights: np.ndarray | None = None) -> sp.csr_matrix:
        """``(n_customers, n_items)`` CSR ``Σ_b w_b · b`` over each customer's baskets (w = 1 by default)."""
        w = np.ones(len(self.customer)) if weights is None else weights
        agg = sp.csr_matrix((w, (self.customer, np.arange(len(self.customer)))),
                            shape=(self.n_customers, len(self.customer)))
        return (agg @ self.items).tocsr()


def basket_counts(baskets: Baskets) -> sp.csr_matrix:
    """``(n_customers, n_items)`` float64 CSR: number of the customer's baskets holding the item."""
    return baskets.per_customer().astype(np.float64)


def popularity_tie(counts: np.ndarray) -> np.ndarray:
    """``(n_items,)`` float64 in (0, 1]: 1 for the most popular item, then ``1 - rank / n_items`` (stable).

    Added (times a small factor) to scores so that equal scores, and the empty tail of a list, follow
    global popularity.
    """
    order = np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")
    tie = np.empty(len(order))
    tie[order] = 1.0 - np.arange(len(order)) / max(len(order), 1)
    return tie


def top_k(scores: np.ndarray, k: int, tie: np.ndarray | None = None) -> np.ndarray:
    """``(n_rows, min(k, n_items))`` int64 item indices of the ``k`` best scores per row, best first.

    Ties (and zero scores) are broken by ``tie`` ``(n_items,)`` in (0, 1] (larger first): it is added
    scaled by ``1e-9 ·`` the row's largest absolute score, below any real score difference of these
    baselines (counts differ by >= 1, TIFU-KNN and ALS scores by far more than that fraction).
    """
    scores = np.asarray(scores, dtype=np.float64)
    k = min(k, scores.shape[1])
    if tie is not None:
        scale = np.maximum(np.abs(scores).max(axis=1, keepdims=True), 1e-300) * 1e-9
        scores = scores + scale * np.asarray(tie)[None, :]
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def gp_top_freq(baskets: Baskets, rows: np.ndarray) -> np.ndarray:
    """GP-TopFreq scores ``(len(rows), n_items)``: the basket counts of the customers ``rows``.

    Rank with :func:`top_k` and ``tie=popularity_tie(global basket counts)``: the customer's own items by
    basket count first, then everything else by global popularity (Li et al. 2023, §3).
    """
    return basket_counts(baskets)[rows].toarray()


def precision_at_k(scores: np.ndarray, relevant: sp.csr_matrix | np.ndarray, k: int,
                   tie: np.ndarray | None = None) -> float:
    """Mean precision@k of ``scores`` ``(n, n_items)`` against ``relevant`` ``(n, n_items)`` (bool or 0/1)."""
    top = top_k(scores, k, tie)
    rel = relevant.toarray() if sp.issparse(relevant) else np.asarray(relevant)
    return float(np.take_along_axis(rel > 0, top, axis=1).sum(axis=1).mean() / k)


@dataclass(frozen=True)
class TifuParams:
    """TIFU-KNN hyper-parameters (Hu et al. 2020): ``group_size`` m, within-group decay ``r_b``, group decay
    ``r_g``, ``neighbours`` k and the personal weight ``alpha``."""

    group_size: int = 7
    r_b: float = 0.9
    r_g: float = 0.7
    neighbours: int = 300
    alpha: float = 0.7

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


class TifuKnn:
    """TIFU-KNN customer vectors and nearest neighbours (see the module docstring for the formulas).

    Attributes:
        vectors: ``(n_customers, n_items)`` float64 CSR, the customer vectors u (zero rows for customers
            without baskets).
        neighbours: ``(n_customers, k_max)`` int64 indices of the nearest other customers with baskets,
            nearest first (-1 where fewer exist).
    """

    def __init__(self, vectors: sp.csr_matrix, neighbours: np.ndarray):
        self.vectors = vectors.tocsr()
        self.neighbours = neighbours
        self._dense: np.ndarray | None = None  # float32 copy of the vectors, made on first use

    @staticmethod
    def customer_vectors(baskets: Baskets, group_size: int, r_b: float, r_g: float) -> sp.csr_matrix:
        """The u vectors, ``(n_customers, n_items)`` float64 CSR."""
        cust = baskets.customer
        n_b = np.bincount(cust, minlength=baskets.n_customers)
        start = np.concatenate([[0], np.cumsum(n_b)[:-1]])
        back = (start[cust] + n_b[cust] - 1) - np.arange(len(cust))  # 0 = the customer's newest basket
        group = back // group_size  # 0 = newest group
        n_groups = -(-n_b[cust] // group_size)
        size = np.where(group == n_groups - 1, n_b[cust] - (n_groups - 1) * group_size, group_size)
        pos = back % group_size  # baskets newer than this one in its group
        w = np.power(r_b, pos) / size * np.power(r_g, group) / n_groups
        return baskets.per_customer(w)

    @classmethod
    def fit(cls, baskets: Baskets, group_size: int, r_b: float, r_g: float, k_max: int,
            rows: np.ndarray | None = None, block: int = 1024, max_dims: int | None = None) -> TifuKnn:
        """Customer vectors and the ``k_max`` nearest other customers of each customer in ``rows`` (default:
        every customer with baskets; the others keep -1), by brute force over blocks of rows.

        With ``max_dims`` and more items than that, the dot products in ``|a-b|² = |a|² + |b|² - 2 a·b`` are
        taken over the ``max_dims`` items with the largest total weight only (the norms stay exact): an
        approximation that keeps a whole-catalogue fit fast (shared rare items do not pull customers closer).
        """
        vectors = cls.customer_vectors(baskets, group_size, r_b, r_g)
        active = np.flatnonzero(np.diff(vectors.indptr) > 0)
        position = np.full(vectors.shape[0], -1, dtype=np.int64)
        position[active] = np.arange(len(active))
        query = active if rows is None else np.asarray(rows, dtype=np.int64)
        sq_all = np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel().astype(np.float32)
        if max_dims is not None and vectors.shape[1] > max_dims:
            heavy = np.sort(np.argsort(-np.asarray(vectors.sum(axis=0)).ravel(), kind="stable")[:max_dims])
            dense = vectors[:, heavy].toarray().astype(np.float32)
        else:
            dense = vectors.toarray().astype(np.float32)
        pool = dense[active]
        sq = sq_all[active]
        k = min(k_max, max(len(active) - 1, 0))
        neighbours = np.full((vectors.shape[0], k_max), -1, dtype=np.int64)
        if k == 0:
            return cls(vectors, neighbours)
        for s in range(0, len(query), block):
            rows = query[s:s + block]
            d2 = sq_all[rows][:, None] + sq[None, :] - 2.0 * (dense[rows] @ pool.T)
            own = position[rows]
            d2[np.flatnonzero(own >= 0), own[own >= 0]] = np.inf  # not its own neighbour
            part = np.argpartition(d2, k - 1, axis=1)[:, :k]
            order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
            neighbours[rows, :k] = active[np.take_along_axis(part, order, axis=1)]
        return cls(vectors, neighbours)

    def neighbour_mean(self, rows: np.ndarray, k: int) -> np.ndarray:
        """``(len(rows), n_items)`` float64 mean of the u vectors of each row's ``k`` nearest neighbours."""
        nb = self.neighbours[rows, :k]
        valid = nb >= 0
        count = np.maximum(valid.sum(axis=1), 1)
        r = np.repeat(np.arange(len(rows)), valid.sum(axis=1))
        w = sp.csr_matrix(((1.0 / count)[r], (r, nb[valid])), shape=(len(rows), self.vectors.shape[0]))
        if self.vectors.shape[1] <= 512:  # small catalogue: a dense product is faster
            if self._dense is None:
                self._dense = self.vectors.toarray().astype(np.float32)
            return np.asarray(w @ self._dense, dtype=np.float64)
        return (w @ self.vectors).toarray()

    def scores(self, rows: np.ndarray, k: int, alpha: float) -> np.ndarray:
        """``(len(rows), n_items)`` float64 ``α u + (1-α) neighbour mean``."""
        return alpha * self.vectors[rows].toarray() + (1.0 - alpha) * self.neighbour_mean(rows, k)


GRID = {"group_size": (3, 7), "r_b": (0.9, 1.0), "r_g": (0.6, 0.8), "neighbours": (100, 300, 900),
        "alpha": tuple(np.round(np.arange(0.0, 1.01, 0.1), 2))}


def tune_tifu_knn(past: Baskets, rows: np.ndarray, labels: sp.csr_matrix, k: int, tie: np.ndarray,
                  grid: dict | None = None) -> tuple[TifuParams, float, list[dict]]:
    """Grid search of TIFU-KNN on a split inside the training period: vectors from the ``past`` baskets,
    precision@k against ``labels`` ``(len(rows), n_items)`` (what the customers ``rows`` bought in the
    window after ``past``).

    Returns:
        ``(best params, its precision@k, every tried setting with its precision)``.
    """
    grid = grid or GRID
    tried = []
    best, best_p = TifuParams(), -1.0
    for m, r_b, r_g in itertools.product(grid["group_size"], grid["r_b"], grid["r_g"]):
        knn = TifuKnn.fit(past, m, r_b, r_g, max(grid["neighbours"]), rows=rows)
        own = knn.vectors[rows].toarray()
        for nn in grid["neighbours"]:
            mean = knn.neighbour_mean(rows, nn)
            for alpha in grid["alpha"]:
                p = precision_at_k(alpha * own + (1 - alpha) * mean, labels, k, tie)
                params = TifuParams(m, r_b, r_g, nn, float(alpha))
                tried.append({**params.to_dict(), "precision": p})
                if p > best_p + 1e-12:
                    best, best_p = params, p
    return best, best_p, tried


def als_scores(counts: sp.csr_matrix, rows: np.ndarray, *, factors: int = 64, regularization: float = 0.01,
               alpha: float = 1.0, iterations: int = 15, seed: int = 42, threads: int = 2) -> np.ndarray:
    """implicit ALS (Hu, Koren & Volinsky 2008) on ``counts`` ``(n_customers, n_items)`` (confidence
    ``1 + alpha · count``); ``(len(rows), n_items)`` float64 scores ``x_u · y_i`` including bought items.

    Raises:
        ImportError: the ``implicit`` package is not installed.
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit's own threads; BLAS threads inside them only oversubscribe
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed, num_threads=threads)
        model.fit(counts.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors[rows], np.float64) @ np.asarray(model.item_factors, np.float64).T


@dataclass
class ValidationSplit:
    """A split inside the training data: baskets before ``start`` and what came after.

    Attributes:
        past: :class:`Baskets` of the days before ``start``.
        rows: ``(n,)`` int64 customers with baskets in both parts.
        labels: ``(n, n_items)`` float64 CSR, 1 if the customer bought the item from ``start`` on.
        tie: ``(n_items,)`` popularity tie-breaker of the past baskets.
        start: first day of the window (days since 1970-01-01).
    """

    past: Baskets
    rows: np.ndarray
    labels: sp.csr_matrix
    tie: np.ndarray
    start: int


def validation_split(u: np.ndarray, i: np.ndarray, day: np.ndarray, shape: tuple[int, int],
                     window_days: int) -> ValidationSplit | None:
    """Carve the last ``window_days`` days of the lines ``(u, i, day)`` as validation labels.

    Returns None when a side is empty or fewer than 20 customers are on both sides.
    """
    start = int(day.max()) + 1 - window_days
    past = day < start
    if past.all() or not past.any():
        return None
    baskets = Baskets.build(u[past], i[past], day[past], shape)
    labels = sp.csr_matrix((np.ones(int((~past).sum())), (u[~past], i[~past])), shape=shape)
    labels.sum_duplicates()
    labels.data[:] = 1.0
    rows = np.flatnonzero((np.bincount(baskets.customer, minlength=shape[0]) > 0) & (np.diff(labels.indptr) > 0))
    if len(rows) < 20:
        return None
    tie = popularity_tie(np.asarray(basket_counts(baskets).sum(axis=0)).ravel())
    return ValidationSplit(baskets, rows, labels[rows], tie, start)


ALS_GRID = ({"factors": 64, "regularization": 0.01, "alpha": 1.0},
            {"factors": 128, "regularization": 0.01, "alpha": 1.0},
            {"factors": 64, "regularization": 0.1, "alpha": 5.0}, {"factors": 32, "regularization": 0.05, "alpha": 2.0})


def tune_als(split: ValidationSplit, k: int, grid: tuple[dict, ...] = ALS_GRID) -> tuple[dict, float]:
    """The ALS setting of ``grid`` with the best precision@k on ``split``: ``(params, precision)``."""
    counts = basket_counts(split.past)
    best, best_p = grid[0], -1.0
    for params in grid:
        p = precision_at_k(als_scores(counts, split.rows, **params), split.labels, k, split.tie)
        if p > best_p:
            best, best_p = params, p
    return best, best_p
