"""Reasons for picks: the top scoring features of each pick, in words.

Mixed into :class:`~dangol_cloud.recommend.model.Recommender`; uses its ``factors``, ``item_features``,
``item_feature_names``, ``history``, ``item_pop``, ``item_rep``, ``reranker`` and ``_new``.
"""

from __future__ import annotations

import numpy as np

from .rerank import LIGHTFM, NEIGHBOURS, pair_features

__all__ = ["ExplainMixin"]


def _feature_text(name: str) -> str:
    kind, _, value = name.partition(":")
    return {
        "category": f"category {value}",
        "tag": f"tagged {value}",
        "price": f"price band {value.replace('/', ' of ')}",
        "item": "customers with your taste buy it",
    }.get(kind, name)

class ExplainMixin:
    """Explanations of LightFM scores (feature contributions) and re-ranker scores (feature groups)."""


    def _lightfm_reasons(self, rows: np.ndarray, cols: np.ndarray) -> list[str | None]:
        """Per pick, the item features that add most to its LightFM score for that customer, in words.

        The contribution of feature f of item i for customer u is ``x_if (r_u · e_f + b_f)`` (the score is
        linear in the feature embeddings, Kula 2015 eq. 1-3); the top two positive ones are named.
        """
        feats = self.item_features[cols].tocoo()
        frow, fcol = np.asarray(feats.row), np.asarray(feats.col)
        contrib = feats.data * (
            np.einsum("ij,ij->i", self.factors.user_emb[rows[frow]], self.factors.feature_emb[fcol])
            + self.factors.feature_bias[fcol]
        )
        order = np.lexsort((-contrib, frow))
        frow, fcol, contrib = frow[order], fcol[order], contrib[order]
        starts = np.searchsorted(frow, frow, side="left")  # first entry of each pick's run
        keep = (np.arange(len(frow)) - starts < 2) & (contrib > 0)
        best: list[list[int]] = [[] for _ in range(len(cols))]
        for pick, f in zip(frow[keep].tolist(), fcol[keep].tolist(), strict=True):
            best[pick].append(f)
        return [self._taste_text(tuple(b)) for b in best]

    def _taste_text(self, features: tuple[int, ...]) -> str | None:
        cached = self._taste_cache.get(features, False)
        if cached is not False:
            return cached
        names = [self.item_feature_names[f] for f in features]
        meta = [_feature_text(n) for n in names if not n.startswith("item:")]
        if meta:
            text = "matches your taste: " + ", ".join(meta)
        else:
            text = "customers with your taste buy it" if names else None
        self._taste_cache[features] = text
        return text

    def explain(self, rows: np.ndarray, cols: np.ndarray, z: np.ndarray | None = None,
                neighbours: np.ndarray | None = None) -> list[list[str]]:
        """Reasons (the top scoring features, in words, at most three) for picks (customer ``rows[k]``, item ``cols[k]``).

        "you often buy this (k of your N visits)": N = the customer's visits (days with purchases), k = those on
        which they bought the pick's menu item, as any of the products sold as it
        (:meth:`~.history.History.menu_item_visits`); feedback rows (likes) are neither.

        Args:
            rows, cols: ``(n_picks,)`` int customer and item indices.
            z: ``(n_picks,)`` LightFM z-scores of the picks if already computed.
            neighbours: ``(n_picks,)`` TIFU-KNN neighbour means of the picks if already computed.

        Returns:
            Per pick a list of at most three reasons (str), best first.
        """
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        if len(rows) == 0:
            return []
        taste = self._lightfm_reasons(rows, cols)
        if self.reranker is None:
            return [[t] if t else [] for t in taste]
        if z is None:
            z = np.array([self.factors.zscores(np.array([r]))[0, c] for r, c in zip(rows, cols, strict=True)])
        nn = neighbours
        if nn is None and self.history.tifu is not None:
            unique, where = np.unique(rows, return_inverse=True)
            nn = self._neighbours(unique)[where, cols]
        x = pair_features(self.history, self.item_pop, self.item_rep, z, rows, cols, nn)
        contrib = self.reranker.contributions(x)
        groups = np.column_stack([
            np.where(x[:, 0] > 0, contrib[:, [0, 1, 2, 8, 9]].sum(axis=1), 0.0),  # repeat purchases
            np.where(x[:, 3] > 0, contrib[:, 3], 0.0),  # recency
            contrib[:, [4, 11]].sum(axis=1), contrib[:, 5], contrib[:, LIGHTFM], contrib[:, NEIGHBOURS],
        ])  # fmt: skip
        visits = self.history.visits[rows].astype(np.int64).tolist()
        times = self.history.menu_item_visits(rows, cols).tolist()  # any product sold as the pick's menu item
        ranking = np.argsort(-groups, axis=1, kind="stable")[:, :3].tolist()
        positive = (np.take_along_axis(groups, np.asarray(ranking).reshape(len(rows), -1), axis=1) > 0).tolist()
        new = self._new[cols].tolist()
        out = []
        for k in range(len(rows)):
            if new[k]:
                out.append(["new on the menu", *([taste[k]] if taste[k] else [])])
                continue
            reasons = []
            for g, ok in zip(ranking[k], positive[k], strict=True):
                if not ok:
                    break
                if g == 0:
                    reasons.append(f"you often buy this ({times[k]} of your {visits[k]} visits)" if times[k] > 1
                                   else "you bought this before")
                elif g == 1:
                    reasons.append("you bought it recently")
                elif g == 2:
                    reasons.append("popular with other customers")
                elif g == 3:
                    reasons.append("customers often re-order it")
                elif g == 5:
                    reasons.append("customers who shop like you buy it")
                elif taste[k]:
                    reasons.append(taste[k])
            out.append(reasons or ["popular with other customers"])
        return out
