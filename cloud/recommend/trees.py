"""Gradient-boosted trees of the second re-ranking stage, stored as plain arrays (no pickle).

Fitted with LightGBM (Ke et al. 2017, "LightGBM", NeurIPS; LambdaMART ranking per customer by default); its trees
are copied into flat NumPy arrays so a saved model needs no pickle and scores without LightGBM. The raw score
(logit) of a row ``x`` is ``baseline + Σ_trees value(leaf(x))`` where ``leaf`` follows ``x[feature] <= threshold``
to the left (NaN goes where the tree learnt missing values go); leaf values already include the learning rate.
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
    def from_lightgbm(cls, booster) -> Forest:
        """Copy the trees of a fitted LightGBM ``Booster`` (one tree per iteration, numerical splits).

        LightGBM folds the initial score into the first tree's leaves (``boost_from_average``), so
        ``baseline`` is 0 and :meth:`raw` equals ``booster.predict(x, raw_score=True)``.

        Raises:
            ValueError: the model has categorical splits, zero-as-missing splits or several trees per iteration.
        """
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("only one tree per iteration (binary or ranking objectives) is supported")
        feature, threshold, left, right, missing_left, value, roots = [], [], [], [], [], [], []

        def add(node: dict) -> int:
            at = len(feature)
            feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1)
            missing_left.append(False), value.append(0.0)
            if "leaf_value" in node:
                value[at] = float(node["leaf_value"])
                return at
            if node["decision_type"] != "<=" or node.get("missing_type") == "Zero":
                raise ValueError(f"unsupported split {node['decision_type']!r} / missing {node.get('missing_type')!r}")
            feature[at], threshold[at] = int(node["split_feature"]), float(node["threshold"])
            # LightGBM sends NaN the default way for missing_type NaN, and treats it as 0.0 for missing_type None
            missing_left[at] = bool(node["default_left"]) if node.get("missing_type") == "NaN" else \
                0.0 <= threshold[at]
            left[at] = add(node["left_child"])
            right[at] = add(node["right_child"])
            return at

        for tree in dump["tree_info"]:
            roots.append(add(tree["tree_structure"]))
        return cls(np.array(feature, np.int32), np.array(threshold, np.float64), np.array(left, np.int32),
                   np.array(right, np.int32), np.array(missing_left, bool), np.array(value, np.float64),
                   np.array(roots, np.int32), 0.0)

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


def fit_forest(x: np.ndarray, y: np.ndarray, *, group_size: int | None = None, objective: str = "lambdarank",
               iterations: int = 100, learning_rate: float = 0.1, max_leaf_nodes: int = 15,
               min_samples_leaf: int = 100, seed: int = 42) -> Forest:
    """Fit a boosted forest with LightGBM (Ke et al. 2017, NeurIPS) on ``x`` ``(n, F)`` float, ``y`` ``(n,)`` bool.

    Args:
        group_size: with ``objective="lambdarank"``, the rows come in consecutive groups of this many (one
            customer's candidates each) and the trees learn to order each group (LambdaMART: Burges 2010,
            "From RankNet to LambdaRank to LambdaMART", MSR-TR-2010-82), NDCG truncated at 20.
        objective: ``"lambdarank"`` or ``"binary"`` (log-loss over single rows; ``group_size`` unused).
        iterations, learning_rate, max_leaf_nodes, min_samples_leaf: boosting rounds, shrinkage, leaves per tree,
            minimum rows per leaf. No early stopping.

    One thread, deterministic: the forest is small (a few seconds) and, on a 2-core box shared with LightFM's and
    other processes' threads, the boosting threads spent most of their time waiting for each other (measured with
    scikit-learn's OpenMP trees: train 247 s wall for 34 s of CPU under load 11, against 82 s / 20 s without).

    Raises:
        ValueError: ``y`` holds a single class, an unknown objective, or ``n`` is not a multiple of ``group_size``.
    """
    import lightgbm

    y = np.asarray(y).astype(np.int8)
    if len(np.unique(y)) < 2:
        raise ValueError("the second stage needs both bought and not-bought pairs")
    params = {"objective": objective, "learning_rate": learning_rate, "num_leaves": max_leaf_nodes,
              "min_data_in_leaf": min_samples_leaf, "seed": seed, "num_threads": 1, "deterministic": True,
              "force_row_wise": True, "verbose": -1}
    group = None
    if objective == "lambdarank":
        if not group_size or len(y) % group_size:
            raise ValueError(f"lambdarank needs rows in groups of group_size, got {len(y)} rows, {group_size}")
        group = np.full(len(y) // group_size, group_size)
        params |= {"lambdarank_truncation_level": 20, "label_gain": [0, 1]}
    elif objective != "binary":
        raise ValueError(f"unknown objective {objective!r} (lambdarank or binary)")
    data = lightgbm.Dataset(np.asarray(x, dtype=np.float64), y, group=group, free_raw_data=True)
    return Forest.from_lightgbm(lightgbm.train(params, data, num_boost_round=iterations))
