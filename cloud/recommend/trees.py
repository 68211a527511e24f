"""Gradient-boosted trees of the second re-ranking stage, stored as plain arrays (no pickle).

Fitted with scikit-learn's ``HistGradientBoostingClassifier`` (binary log-loss, the LightGBM-style histogram
algorithm: Ke et al. 2017, "LightGBM", NeurIPS); its trees are copied into flat NumPy arrays so a saved model
needs no pickle and scores without scikit-learn's private predictor objects. The raw score (logit) of a row
``x`` is ``baseline + Σ_trees value(leaf(x))`` where ``leaf`` follows ``x[feature] <= threshold`` to the left
(NaN goes where the tree learnt missing values go); leaf values already include the learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Forest", "fit_forest"]


@dataclass
class Forest:
    """A boosted forest in flat arrays; node ``roots[t] + j`` is node ``j`` of tree ``t``.

    Attributes:
        feature: ``(n_nodes,)`` int32 split feature (-1 at leaves).
        threshold: ``(n_nodes,)`` float64 split threshold (go left when ``x <= threshold``).
        left, right: ``(n_nodes,)`` int32 child node ids, global (-1 at leaves).
        missing_left: ``(n_nodes,)`` bool, where NaN goes.
        value: ``(n_nodes,)`` float64 leaf value (learning rate included).
        roots: ``(n_trees,)`` int32 global id of each tree's root.
        baseline: float, the initial raw prediction (log-odds of the base rate).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float

    @classmethod
    def from_sklearn(cls, model) -> Forest:
        """Copy the trees of a fitted binary ``HistGradientBoostingClassifier`` (numerical features only).

        Raises:
            ValueError: the model has categorical splits or is not binary.
        """
        if model.n_trees_per_iteration_ != 1:
            raise ValueError("only binary classifiers are supported")
        parts, roots, offset = [], [], 0
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ValueError("categorical splits are not supported")
            leaf = nodes["is_leaf"].astype(bool)
            parts.append((np.where(leaf, -1, nodes["feature_idx"]).astype(np.int32),
                          nodes["num_threshold"].astype(np.float64),
                          np.where(leaf, -1, nodes["left"].astype(np.int64) + offset).astype(np.int32),
                          np.where(leaf, -1, nodes["right"].astype(np.int64) + offset).astype(np.int32),
                          nodes["missing_go_to_left"].astype(bool), np.where(leaf, nodes["value"], 0.0)))
            roots.append(offset)
            offset += len(nodes)
        cols = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(6)]
        return cls(cols[0].astype(np.int32), cols[1], cols[2].astype(np.int32), cols[3].astype(np.int32),
                   cols[4].astype(bool), cols[5], np.array(roots, dtype=np.int32),
                   float(np.ravel(model._baseline_prediction)[0]))

    def raw(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` float64 raw scores (logits) of the rows of ``x`` ``(n, n_features)``."""
        xt = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)  # feature-major: one gather per level
        n = xt.shape[1]
        out = np.full(n, self.baseline)
        for root in self.roots:
            node = np.full(n, root, dtype=np.int64)
            while True:
                feat = self.feature[node]
                idx = np.flatnonzero(feat >= 0)
                if len(idx) == 0:
                    break
                at = node[idx]
                v = xt[feat[idx], idx]
                go_left = v <= self.threshold[at]
                missing = np.isnan(v)
                if missing.any():
                    go_left = np.where(missing, self.missing_left[at], go_left)
                node[idx] = np.where(go_left, self.left[at], self.right[at])
            out += self.value[node]
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays under ``prefix`` names, for ``np.savez`` (see :meth:`from_arrays`)."""
        return {f"{prefix}{k}": getattr(self, k) for k in ("feature", "threshold", "left", "right", "missing_left",
                                                            "value", "roots")} | {f"{prefix}baseline":
                                                                                   np.array([self.baseline])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Forest:
        """Inverse of :meth:`to_arrays`."""
        a = {k: arrays[f"{prefix}{k}"] for k in ("feature", "threshold", "left", "right", "missing_left", "value",
                                                  "roots")}
        return cls(**a, baseline=float(arrays[f"{prefix}baseline"][0]))


def fit_forest(x: np.ndarray, y: np.ndarray, *, iterations: int = 100, learning_rate: float = 0.1,
               max_leaf_nodes: int = 15, min_samples_leaf: int = 100, seed: int = 42) -> Forest:
    """Fit a binary log-loss boosted forest on ``x`` ``(n, F)`` float, ``y`` ``(n,)`` bool (no early stopping).

    One OpenMP thread: the forest is small (a few seconds) and, on a 2-core box shared with LightFM's and other
    processes' threads, scikit-learn's OpenMP threads spent most of their time waiting for each other (measured:
    train 247 s wall for 34 s of CPU under load 11, against 82 s / 20 s without the forest).

    Raises:
        ValueError: ``y`` holds a single class.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    y = np.asarray(y).astype(np.int8)
    if len(np.unique(y)) < 2:
        raise ValueError("the second stage needs both bought and not-bought pairs")
    model = HistGradientBoostingClassifier(max_iter=iterations, learning_rate=learning_rate,
                                           max_leaf_nodes=max_leaf_nodes, min_samples_leaf=min_samples_leaf,
                                           early_stopping=False, random_state=seed)
    with threadpool_limits(1, "openmp"):
        model.fit(np.asarray(x, dtype=np.float64), y)
    return Forest.from_sklearn(model)
