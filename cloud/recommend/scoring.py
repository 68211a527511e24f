"""Scoring known customers: the linear re-ranker over the whole catalogue, then the boosted second stage.

Stage 1 (:mod:`.rerank`): the logistic-regression logit of every (customer, item), computed densely per block
of customers. Stage 2 (:mod:`.trees`): for each customer's ``M`` best stage-1 items (the candidates), a boosted
forest re-scores the pair from :data:`STAGE2_FEATURES` (the stage-1 features plus the stage-1 logit and rank, the
whole TIFU-KNN score ``α u + (1-α) neighbours`` and the customer's own recency), and the final candidate score is
the blend ``(1-λ) · stage-1 logit + λ · forest logit`` with ``λ`` chosen on held-out customers of the training
window (:mod:`.stage2`). Items outside the candidates keep their stage-1 order, below every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .factors import Factors
from .history import History
from .rerank import FEATURES, LIGHTFM, NEIGHBOURS, PERSONAL, Reranker, pair_features
from .trees import Forest

__all__ = ["STAGE2_FEATURES", "Stage2", "apply_stage2", "candidates", "linear_scores", "stage2_features"]

STAGE2_FEATURES: tuple[str, ...] = (*FEATURES, "linear_logit", "linear_rank", "tifu_score", "customer_recency",
                                    "log_lines")


@dataclass
class Stage2:
    """The fitted second stage.

    Attributes:
        forest: the boosted trees over :data:`STAGE2_FEATURES`.
        blend: λ in [0, 1], the forest's weight in the final candidate score (0 = stage 1 alone).
        candidates: M, how many of each customer's best stage-1 items are re-scored.
        tifu_alpha: α of the ``tifu_score`` feature.
        validation: ``{λ: precision@10}`` on the held-out customers (as str keys, for meta.json).
        ignored_weight: β ≥ 0, subtracted times the customer's decayed count of shown-and-ignored showings of the
            item (``History.ignored``, feedback) from every score; 0 unless it helped on the held-out customers.
    """

    forest: Forest
    blend: float
    candidates: int
    tifu_alpha: float
    validation: dict
    ignored_weight: float = 0.0


def linear_scores(history: History, item_pop: np.ndarray, item_rep: np.ndarray, factors: Factors,
                  reranker: Reranker | None, rows: np.ndarray, neighbours_k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(scores, lightfm_z, tifu_neighbours)`` for customer indices ``rows``, each ``(len(rows), n_items)`` float64
    (the last None without a TIFU-KNN part). ``scores`` is the stage-1 logit, or the LightFM z-score without a
    re-ranker. Equal to ``reranker.logit(pair_features(...))`` of every pair, computed without the pair matrix:
    the personal features are zero for items never bought, so only bought pairs need them."""
    z = factors.zscores(rows)
    if reranker is None:
        return z, z, None
    w = reranker.weights
    scores = z * w[LIGHTFM]
    nn = None if history.tifu is None else history.tifu.neighbour_mean(rows, neighbours_k)
    if nn is not None:
        scores += w[NEIGHBOURS] * nn
    scores += (reranker.intercept + w[4] * item_pop + w[5] * item_rep + w[11] * history.item_trend())[None, :]
    scores += (w[7] * np.log1p(history.visits[rows].astype(np.float64)))[:, None]
    bought = history.visits_with_item[rows].tocoo()
    if bought.nnz:
        x = pair_features(history, item_pop, item_rep, z[bought.row, bought.col], rows[bought.row], bought.col)
        scores[bought.row, bought.col] += x[:, list(PERSONAL)] @ w[list(PERSONAL)]
    return scores, z, nn


def candidates(scores: np.ndarray, m: int) -> np.ndarray:
    """``(n_rows, min(m, n_items))`` int64 column indices of each row's ``m`` best scores, best first."""
    m = min(m, scores.shape[1])
    part = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def stage2_features(history: History, item_pop: np.ndarray, item_rep: np.ndarray, scores: np.ndarray,
                    z: np.ndarray, nn: np.ndarray | None, rows: np.ndarray, cand: np.ndarray, tifu_alpha: float
                    ) -> np.ndarray:
    """``(len(rows) · M, len(STAGE2_FEATURES))`` float64 features of the candidates ``cand`` ``(len(rows), M)``
    (row-major: customer ``rows[j]``'s candidates at ``j·M … j·M+M-1``); ``scores``, ``z``, ``nn`` are the
    ``(len(rows), n_items)`` outputs of :func:`linear_scores`."""
    n, m = cand.shape
    local = np.repeat(np.arange(n), m)
    cols = cand.ravel()
    nn_pairs = None if nn is None else nn[local, cols]

    def block(m):  # the candidates' values of a (n_customers, n_items) CSR through one dense block of rows
        return np.take_along_axis(m[rows].toarray(), cand, axis=1).ravel().astype(np.float64)

    x = pair_features(history, item_pop, item_rep, z[local, cols], rows[local], cols, nn_pairs, lookup=block)
    own_u = x[:, 9]
    cust_recency = np.asarray(history.recency[rows].max(axis=1).toarray()).ravel()
    lines = block(history.lines)
    extra = np.column_stack([scores[local, cols], np.tile(np.arange(m, dtype=np.float64), n),
                             tifu_alpha * own_u + (1 - tifu_alpha) * (0.0 if nn_pairs is None else nn_pairs),
                             cust_recency[local], np.log1p(lines)])
    return np.hstack([x, extra])


def apply_stage2(stage2: Stage2 | None, history: History, item_pop: np.ndarray, item_rep: np.ndarray,
                 scores: np.ndarray, z: np.ndarray, nn: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Final ``(len(rows), n_items)`` scores: candidates get the blend, the rest keep their stage-1 order below
    the lowest candidate; then ``β · History.ignored`` is subtracted (soft negatives). ``scores`` itself is returned
    unchanged when there is no second stage or λ = 0 and β = 0."""
    if stage2 is None or len(rows) == 0:
        return scores
    penalty = None
    if stage2.ignored_weight > 0 and history.ignored is not None:
        penalty = stage2.ignored_weight * history.ignored[rows].toarray()
    if stage2.blend <= 0:
        return scores if penalty is None else scores - penalty
    cand = candidates(scores, stage2.candidates)
    x = stage2_features(history, item_pop, item_rep, scores, z, nn, rows, cand, stage2.tifu_alpha)
    blended = ((1 - stage2.blend) * np.take_along_axis(scores, cand, axis=1)
               + stage2.blend * stage2.forest.raw(x).reshape(cand.shape))
    out = scores.copy()
    rest = np.ones(scores.shape, bool)
    np.put_along_axis(rest, cand, False, axis=1)
    top_rest = np.where(rest, scores, -np.inf).max(axis=1, keepdims=True)
    floor = blended.min(axis=1, keepdims=True)
    shift = np.where(np.isfinite(top_rest), floor - 1.0 - top_rest, 0.0)
    out += np.where(rest, shift, 0.0)
    np.put_along_axis(out, cand, blended, axis=1)
    return out if penalty is None else out - penalty
