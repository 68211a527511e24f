"""Repeat-purchase re-ranker: a logistic regression over per-(customer, item) features.

Regulars re-order favourites, so "how often and how recently did this customer buy it" is the strongest
signal in grocery and café data (own-frequency baselines are hard to beat in next-basket
recommendation: Li et al. 2023, "A Next Basket Recommendation Reality Check", ACM TOIS 41(4);
Hu et al. 2020, TIFU-KNN, SIGIR). The re-ranker combines those repeat signals with item popularity,
item re-order rate and the LightFM score (exploration of items not bought yet) into one logit:

``P(customer buys item in the next window) = σ(b + Σ_k w_k f_k)``,

fitted on the training data alone: features from purchases before the last ``rerank_window_days``,
labels = bought in that window (a validation split carved from the training period, never the test
period). Never-bought items are subsampled per customer and weighted by the inverse sampling rate so
the fitted logit is unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .history import History, pair_values

FEATURES: tuple[str, ...] = (
    "log_visits_with_item",  # log(1 + visits on which the customer bought the item)
    "share_of_visits",  # visits with the item / all visits of the customer
    "log_decayed_visits",  # log(1 + Σ 0.5^(age/h)) over those visits
    "recency",  # 0.5^(age of last purchase / h), 0 if never bought
    "item_popularity",  # log((buyers + 1) / (customers + 1)), category median for items never sold
    "item_repeat_rate",  # (repeat buyers + 1) / (buyers + 5): Laplace-style smoothing towards 0.2
    "lightfm",  # LightFM score, z-scored per customer over the catalogue
    "log_customer_visits",  # log(1 + visits of the customer)
    "repeat_x_visits",  # log_visits_with_item × item_repeat_rate
    "tifu_own",  # TIFU-KNN customer vector u (Hu et al. 2020): decayed basket groups, 0 if never bought
    "tifu_neighbours",  # mean u of the customer's k nearest customers (TIFU-KNN's neighbour part)
    "item_trend",  # log(share of the last two weeks' lines / share of all lines), History.item_trend
)
PERSONAL = (0, 1, 2, 3, 8, 9)  # zero for items the customer never bought
LIGHTFM = 6
NEIGHBOURS = 10


def item_statistics(history: History, categories: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(item_popularity, item_repeat_rate)``, each ``(n_items,)`` float64 (see :data:`FEATURES`).

    Items nobody bought (new menu items) take the median of their category's sold items (else of all
    sold items), so a new item is neither favoured nor buried by popularity.
    """
    active = max(float((history.visits > 0).sum()), 1.0)
    buyers = history.item_buyers.astype(np.float64)
    pop = np.log((buyers + 1.0) / (active + 1.0))
    rep = (history.item_repeaters + 1.0) / (buyers + 5.0)
    sold = buyers > 0
    if sold.any() and not sold.all():
        cats = np.array([c or "" for c in categories], dtype=object)
        for k in np.where(~sold)[0]:
            peers = sold & (cats == cats[k]) if cats[k] else np.zeros_like(sold)
            ref = peers if peers.any() else sold
            pop[k], rep[k] = np.median(pop[ref]), np.median(rep[ref])
    return pop, rep


def pair_features(history: History, item_pop: np.ndarray, item_rep: np.ndarray, lightfm_z: np.ndarray,
                  rows: np.ndarray, cols: np.ndarray, neighbours: np.ndarray | None = None,
                  lookup=None) -> np.ndarray:
    """``(n_pairs, len(FEATURES))`` float64 feature matrix for the (customer ``rows[k]``, item ``cols[k]``) pairs.

    ``lightfm_z`` is the ``(n_pairs,)`` per-customer z-scored LightFM score of each pair, ``neighbours`` the
    ``(n_pairs,)`` TIFU-KNN neighbour mean (0 if None or the history has no TIFU-KNN part). ``lookup(m)``, if
    given, returns ``m[rows[k], cols[k]]`` of a ``(n_customers, n_items)`` CSR ``m`` for every pair (a faster way
    for the caller's layout; default :func:`~.history.pair_values`).
    """
    val = lookup or (lambda m: pair_values(m, rows, cols))
    v = val(history.visits_with_item)
    visits = np.maximum(history.visits[rows].astype(np.float64), 1.0)
    lv = np.log1p(v)
    out = np.empty((len(rows), len(FEATURES)))
    out[:, 0] = lv
    out[:, 1] = v / visits
    out[:, 2] = np.log1p(val(history.decayed))
    out[:, 3] = val(history.recency)
    out[:, 4] = item_pop[cols]
    out[:, 5] = item_rep[cols]
    out[:, 6] = lightfm_z
    out[:, 7] = np.log1p(history.visits[rows].astype(np.float64))
    out[:, 8] = lv * item_rep[cols]
    out[:, 9] = val(history.tifu.vectors) if history.tifu is not None else 0.0
    out[:, 10] = 0.0 if neighbours is None else neighbours
    out[:, 11] = history.item_trend()[cols]
    return out


@dataclass
class Reranker:
    """Fitted logistic regression on standardised features, folded back to raw-feature weights.

    Attributes:
        weights: ``(len(FEATURES),)`` float64 raw-feature weights ``w_k / sd_k``.
        intercept: float, ``b - Σ w_k mean_k / sd_k``.
        mean, scale: ``(len(FEATURES),)`` float64 training mean and standard deviation (for explanations).
        coef: ``(len(FEATURES),)`` float64 standardised coefficients (comparable across features).
        n_pairs, n_customers: size of the fitting sample.
    """

    weights: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    n_pairs: int = 0
    n_customers: int = 0

    def logit(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` logits for a ``(n, len(FEATURES))`` feature matrix."""
        return x @ self.weights + self.intercept

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """``(n, len(FEATURES))`` per-feature contributions relative to the average pair, ``coef_k · z_k``."""
        return (x - self.mean) / self.scale * self.coef

    @classmethod
    def fallback(cls) -> Reranker:
        """Used when the training data is too short to carve a label window: own-frequency first, then
        popularity, then LightFM (a fixed, hand-set ordering, not a fitted model)."""
        w = np.zeros(len(FEATURES))
        w[0], w[4], w[6] = 1.0, 0.1, 0.05
        return cls(w, 0.0, np.zeros(len(FEATURES)), np.ones(len(FEATURES)), w.copy())

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, n_customers: int) -> Reranker:
        """Fit scikit-learn's L2 logistic regression (C=1, lbfgs) on standardised ``x`` ``(n, F)``, ``y`` ``(n,)`` bool."""
        from sklearn.linear_model import LogisticRegression

        mean = np.average(x, axis=0, weights=sample_weight)
        scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=sample_weight))
        scale = np.where(scale > 1e-12, scale, 1.0)
        from threadpoolctl import threadpool_limits

        model = LogisticRegression(C=1.0, max_iter=1000)
        with threadpool_limits(1, "blas"):  # (n, 12) mat-vecs: threads only wait for each other on a shared box
            model.fit((x - mean) / scale, y.astype(np.int8), sample_weight=sample_weight)
        coef = model.coef_[0].astype(np.float64)
        weights = coef / scale
        intercept = float(model.intercept_[0] - (coef * mean / scale).sum())
        return cls(weights, intercept, mean, scale, coef, len(y), n_customers)


def sample_pairs(history: History, rows: np.ndarray, n_negatives: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs for fitting: every item each customer in ``rows`` bought, plus ``n_negatives``
    never-bought items drawn uniformly without replacement, weighted ``n_never_bought / n_drawn``.

    Returns ``(pair_rows, pair_cols, weights)``, each ``(n_pairs,)``.
    """
    n_items = history.visits_with_item.shape[1]
    pr, pc, pw = [], [], []
    m = history.visits_with_item
    for r in rows:
        bought = m.indices[m.indptr[r]:m.indptr[r + 1]]
        pr.append(np.full(len(bought), r))
        pc.append(bought)
        pw.append(np.ones(len(bought)))
        mask = np.ones(n_items, bool)
        mask[bought] = False
        never = np.flatnonzero(mask)
        if len(never):
            take = min(n_negatives, len(never))
            pr.append(np.full(take, r))
            pc.append(rng.choice(never, size=take, replace=False))
            pw.append(np.full(take, len(never) / take))
    return np.concatenate(pr), np.concatenate(pc), np.concatenate(pw)
