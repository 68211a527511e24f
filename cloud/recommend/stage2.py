"""Fitting the second re-ranking stage and its blend weight on the training window (never the test period).

Inside :func:`~dangol_cloud.recommend.fit.train` the last ``rerank_window_days`` of the training data are the
labels and everything before them the features. The customers of that window are split at random into a fit
part and a held-out part (``stage2_holdout``). The stage-1 logistic regression and the boosted forest are fitted
on the fit part; the blend weight λ (:class:`~.scoring.Stage2`) is the value of ``stage2_blends`` with the best
precision@k of the held-out customers' top-k lists (ties: the smaller λ, so λ = 0 — stage 1 alone — wins unless
the forest helps on customers it has not seen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import RecommenderConfig
from .rerank import Reranker
from .scoring import Stage2, candidates, linear_scores, stage2_features
from .trees import fit_forest

__all__ = ["blend_precision", "choose_ignored_weight", "fit_stage2"]

_BLOCK = 2048


def _candidate_rows(history, pop, rep, factors, reranker, rows, labels, cfg):
    """Stage-2 features ``(len(rows)·M, F)``, labels ``(len(rows)·M,)`` bool, stage-1 logits ``(len(rows), M)``,
    the per-row count of relevant items ``(len(rows),)`` and the candidates ``(len(rows), M)`` for the customers
    ``rows`` (label rows aligned)."""
    xs, ys, lin, n_rel, cands = [], [], [], [], []
    for start in range(0, len(rows), _BLOCK):
        block = rows[start:start + _BLOCK]
        scores, z, nn = linear_scores(history, pop, rep, factors, reranker, block, cfg.tifu_neighbours)
        cand = candidates(scores, cfg.stage2_candidates)
        xs.append(stage2_features(history, pop, rep, scores, z, nn, block, cand, cfg.stage2_tifu_alpha))
        rel = labels[block]
        ys.append(np.take_along_axis(rel.toarray() > 0, cand, axis=1).ravel())
        lin.append(np.take_along_axis(scores, cand, axis=1))
        n_rel.append(np.diff(rel.indptr))
        cands.append(cand)
    return np.vstack(xs), np.concatenate(ys), np.vstack(lin), np.concatenate(n_rel), np.vstack(cands)


def blend_precision(linear: np.ndarray, forest: np.ndarray, relevant: np.ndarray, blend: float, k: int) -> float:
    """Mean precision@k over rows of the top-k by ``(1-blend)·linear + blend·forest``.

    Args:
        linear, forest: ``(n, M)`` float candidate scores; relevant: ``(n, M)`` bool.
    """
    s = (1 - blend) * linear + blend * forest
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(relevant, top, axis=1).sum(axis=1).mean() / k)


def fit_stage2(windows: Sequence, reranker: Reranker, cfg: RecommenderConfig, k: int = 10) -> Stage2 | None:
    """Fit the forest on the fit customers' candidates of every label window and choose λ (and the
    soft-negative weight β) on the held-out customers' candidates, pooled over the windows.

    Args:
        windows: :class:`~dangol_cloud.recommend.fit.LabelWindow` s (each: history, item statistics, factors,
            fit ``rows`` and held-out ``hold`` customer indices, ``labels`` ``(n_customers, n_items)`` CSR, > 0 =
            bought in the window).
        reranker: the fitted stage 1.

    Returns:
        The :class:`Stage2`, or None when a window has an empty part or the labels hold a single class.
    """
    if not windows or any(len(w.rows) == 0 or len(w.hold) == 0 for w in windows):
        return None
    fit = [_candidate_rows(w.history, w.pop, w.rep, w.factors, reranker, w.rows, w.labels, cfg) for w in windows]
    x, y = np.vstack([f[0] for f in fit]), np.concatenate([f[1] for f in fit])
    if y.all() or not y.any():
        return None
    forest = fit_forest(x, y, group_size=fit[0][2].shape[1], objective=cfg.stage2_objective,
                        iterations=cfg.stage2_iterations, learning_rate=cfg.stage2_learning_rate,
                        max_leaf_nodes=cfg.stage2_leaves, min_samples_leaf=cfg.stage2_min_leaf,
                        seed=cfg.random_state)
    lin, gb, rel, ign = [], [], [], []
    for w in windows:
        xh, yh, lin_w, _, cand = _candidate_rows(w.history, w.pop, w.rep, w.factors, reranker, w.hold, w.labels, cfg)
        m = lin_w.shape[1]
        lin.append(lin_w)
        gb.append(forest.raw(xh).reshape(-1, m))
        rel.append(yh.reshape(-1, m))
        ignored = w.history.ignored
        ign.append(np.zeros_like(lin_w) if ignored is None else
                   np.take_along_axis(ignored[w.hold].toarray(), cand, axis=1))
    lin, gb, rel, ign = (np.vstack(a) for a in (lin, gb, rel, ign))
    tried = {float(b): blend_precision(lin, gb, rel, float(b), k) for b in cfg.stage2_blends}
    best = max(tried, key=lambda b: (round(tried[b], 12), -b))
    validation = {f"{b:g}": round(p, 6) for b, p in tried.items()}
    weight = 0.0
    if ign.any():
        blended = (1 - best) * lin + best * gb
        weight, by_weight = choose_ignored_weight(blended, ign, rel, cfg.ignored_weights, k)
        validation |= {f"ignored {w:g}": round(p, 6) for w, p in by_weight.items()}
    return Stage2(forest, best, cfg.stage2_candidates, cfg.stage2_tifu_alpha, validation, weight)


def choose_ignored_weight(blended: np.ndarray, ignored: np.ndarray, relevant: np.ndarray, weights, k: int
                          ) -> tuple[float, dict[float, float]]:
    """The soft-negative weight β of ``weights`` with the best precision@k of ``blended - β · ignored`` (all
    ``(n, M)``: candidate scores, decayed shown-and-ignored counts, relevance); ties go to the smaller β, so β = 0
    unless the penalty helps. Returns ``(β, {β: precision@k})``."""
    tried = {float(w): blend_precision(blended - float(w) * ignored, np.zeros_like(blended), relevant, 0.0, k)
             for w in weights}
    return max(tried, key=lambda w: (round(tried[w], 12), -w)), tried
