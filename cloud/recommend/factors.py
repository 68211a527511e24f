"""The LightFM part: fitting and the learned representations (Kula 2015, arXiv:1507.08439).

LightFM scores customer u and item i as ``r_u · q_i + b_u + b_i`` where ``q_i = Σ_f x_if e_f`` sums the
embeddings ``e_f`` of the item's features ``f`` (weights ``x_if``, rows of the item feature matrix) and
likewise for customers. Only ``r_u · q_i + b_i`` is kept: the customer bias does not change a ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .config import RecommenderConfig


@dataclass
class Factors:
    """Learned LightFM representations.

    Attributes:
        user_emb: ``(n_customers, d)`` float32 customer representations r_u.
        item_emb: ``(n_items, d)`` float32 item representations q_i.
        item_bias: ``(n_items,)`` float32 item biases b_i.
        feature_emb: ``(n_item_features, d)`` float32 item-feature embeddings e_f (for explanations).
        feature_bias: ``(n_item_features,)`` float32 item-feature biases.
    """

    user_emb: np.ndarray
    item_emb: np.ndarray
    item_bias: np.ndarray
    feature_emb: np.ndarray
    feature_bias: np.ndarray

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), n_items)`` float64 LightFM scores ``r_u · q_i + b_i`` for customer indices ``rows``."""
        return self.user_emb[rows].astype(np.float64) @ self.item_emb.T.astype(np.float64) + self.item_bias

    def zscores(self, rows: np.ndarray) -> np.ndarray:
        """LightFM scores standardised per customer over the catalogue (mean 0, sd 1), ``(len(rows), n_items)``."""
        s = self.scores(rows)
        return (s - s.mean(axis=1, keepdims=True)) / (s.std(axis=1, keepdims=True) + 1e-9)


def fit_lightfm(interactions: sp.coo_matrix, item_features: sp.csr_matrix, user_features: sp.csr_matrix | None,
                config: RecommenderConfig, model=None, epochs: int | None = None):
    """Fit (or, given ``model``, continue fitting) a LightFM model on binary implicit feedback.

    Args:
        interactions: ``(n_customers, n_items)`` COO, any positive value = "bought at least once".
        item_features: ``(n_items, n_item_features)`` CSR (identity + metadata, rows sum to 1).
        user_features: ``(n_customers, n_user_features)`` CSR or None (identity only).
        config: hyper-parameters (components, loss, epochs, learning rate, alphas, threads, seed).
        model: a LightFM model fitted on the same shapes to continue from (``fit_partial``, warm start).
        epochs: passes over the data (default ``config.epochs``).

    Returns:
        The fitted ``lightfm.LightFM``.
    """
    from lightfm import LightFM  # imported here: a compiled extension, only needed to train

    binary = interactions.tocsr()
    binary.sum_duplicates()
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    if model is None:
        model = LightFM(
            no_components=config.no_components,
            loss=config.loss,
            learning_rate=config.learning_rate,
            item_alpha=config.item_alpha,
            user_alpha=config.user_alpha,
            max_sampled=config.max_sampled,
            random_state=np.random.RandomState(config.random_state),
        )
    model.fit_partial(binary.tocoo(), user_features=user_features, item_features=item_features,
                      epochs=config.epochs if epochs is None else epochs, num_threads=config.num_threads)
    return model


def factors_of(model, item_features: sp.csr_matrix, user_features: sp.csr_matrix | None) -> Factors:
    """The :class:`Factors` of a fitted LightFM ``model``."""
    _, user_emb = model.get_user_representations(user_features)
    item_bias, item_emb = model.get_item_representations(item_features)
    return Factors(
        user_emb=np.ascontiguousarray(user_emb, dtype=np.float32),
        item_emb=np.ascontiguousarray(item_emb, dtype=np.float32),
        item_bias=np.asarray(item_bias, dtype=np.float32),
        feature_emb=np.asarray(model.item_embeddings, dtype=np.float32),
        feature_bias=np.asarray(model.item_biases, dtype=np.float32),
    )


def fit_factors(interactions: sp.coo_matrix, item_features: sp.csr_matrix, user_features: sp.csr_matrix | None,
                config: RecommenderConfig) -> Factors:
    """Fit LightFM from scratch (see :func:`fit_lightfm`) and return its :class:`Factors`."""
    return factors_of(fit_lightfm(interactions, item_features, user_features, config), item_features, user_features)
