"""Training, serving, saving and loading the Dangol recommender.

The shipped model is a hybrid: LightFM (Kula 2015) with item metadata features learns tastes and scores
items a customer has not bought yet, including new menu items (through their category, tags and price
band); a logistic-regression re-ranker (:mod:`.rerank`) fitted on the last weeks of the training data
blends it with the customer's own repeat-purchase history, item popularity and item re-order rate.
Customers the model does not know get the cold-start list: what sells at this store and time of day.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .config import RecommenderConfig
from .dayparts import DayPartProfile, daypart_of
from .factors import Factors
from .history import History, PopularityTable
from .explain import ExplainMixin
from .lists import ListsMixin
from .rerank import Reranker
from .scoring import Stage2, apply_stage2, linear_scores
from .segments import SegmentTable

__all__ = ["TRAIN_STEPS", "Pick", "Recommender", "train"]

_BATCH = 2048  # customers scored per dense block: 2048 x n_items float64


@dataclass
class Pick:
    """One recommended item: ``score`` (re-ranker logit, LightFM z-score, or cold-start purchase share)
    and ``reasons``, the top scoring features in words (e.g. "you often buy this (5 of your 9 visits)")."""

    item: str
    score: float
    reasons: list[str] = field(default_factory=list)


class Recommender(ListsMixin, ExplainMixin):
    """A trained, versioned recommender; build it with :func:`train` or :meth:`load`.

    Attributes:
        version: ``"<UTC yyyymmddThhmmssZ>-<8 hex of sha1(data, config)>"``.
        config: the :class:`RecommenderConfig` it was trained with.
        customers: ``(n_customers,)`` str, known customer ids (index order).
        items: ``(n_items,)`` str, catalogue item ids (index order).
        categories: per item, category or None.
        available: ``(n_items,)`` bool, the items frame's ``available`` flags at training time.
    """

    def __init__(self, *, version: str, config: RecommenderConfig, customers: np.ndarray, items: np.ndarray,
                 categories: list[str | None], available: np.ndarray, item_features: sp.csr_matrix,
                 item_feature_names: list[str], factors: Factors, history: History, item_pop: np.ndarray,
                 item_rep: np.ndarray, reranker: Reranker | None, popularity: PopularityTable,
                 meta: dict | None = None, dayparts: DayPartProfile | None = None,
                 segments: SegmentTable | None = None, stage2: Stage2 | None = None):
        self.version = version
        self.config = config
        self.customers = customers
        self.items = items
        self.categories = categories
        self.available = available
        self.item_features = item_features.tocsr()
        self.item_feature_names = item_feature_names
        self.factors = factors
        self.history = history
        self.item_pop = item_pop
        self.item_rep = item_rep
        self.reranker = reranker
        self.popularity = popularity
        self.dayparts = dayparts
        self.segments = segments
        self.stage2 = stage2
        self.meta = meta or {}
        self._customer_index = {c: k for k, c in enumerate(customers)}
        self._item_index = {c: k for k, c in enumerate(items)}
        self._new = ~history.sold()  # items nobody bought before training, as themselves or as any of their products
        self._item_names = [str(i) for i in items]
        self._taste_cache: dict[tuple[int, ...], str | None] = {}
        cats = sorted({c for c in categories if c is not None})
        cat_id = {c: k for k, c in enumerate(cats)}
        self._category_code = np.array([cat_id[c] if c is not None else -1 for c in categories], dtype=np.int64)

    # --- scoring --------------------------------------------------------------------------------------

    def _neighbours(self, rows: np.ndarray) -> np.ndarray | None:
        """``(len(rows), n_items)`` TIFU-KNN neighbour means, or None without a TIFU-KNN part."""
        if self.history.tifu is None:
            return None
        return self.history.tifu.neighbour_mean(rows, self.config.tifu_neighbours)

    def _score_block(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(scores, lightfm_z, tifu_neighbours)``, each ``(len(rows), n_items)`` float64 (the last None without a
        TIFU-KNN part): stage-1 logits re-scored by the second stage (:mod:`.scoring`); see :meth:`score_matrix`."""
        scores, z, nn = linear_scores(self.history, self.item_pop, self.item_rep, self.factors, self.reranker, rows,
                                      self.config.tifu_neighbours)
        if self.reranker is not None:
            scores = apply_stage2(self.stage2, self.history, self.item_pop, self.item_rep, scores, z, nn, rows)
        return scores, z, nn

    def score_matrix(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), n_items)`` float64 scores for known customer indices ``rows`` (higher = better).

        Hybrid: the re-ranker logit (re-scored by the second stage among each customer's candidates); with
        ``config.rerank=False``: the per-customer LightFM z-score.
        """
        return self._score_block(rows)[0]

    def _available_mask(self, available: set[str] | None) -> np.ndarray:
        if available is None:
            return self.available.copy()
        mask = np.zeros(len(self.items), bool)
        for item in available:
            k = self._item_index.get(str(item))
            if k is not None:
                mask[k] = True
        return mask

    # --- public API ---------------------------------------------------------------------------------

    def new_items(self) -> np.ndarray:
        """``(n_items,)`` bool (index order of ``items``): items nobody bought before training, neither as
        themselves nor as another item sold as the same menu item (``train(menu_item_of=...)``) — the
        candidates of the "new on the menu" slot."""
        return self._new.copy()

    def recommend(self, customers: Sequence[str], n: int = 10, *, available: set[str] | None = None,
                  hour: int | None = None, store: str | None = None, explain: bool = True,
                  exclude: Mapping[str, Collection[str]] | None = None,
                  segments: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[Pick]]:
        """Top-``n`` picks per customer.

        Args:
            customers: customer ids (str); ids the model has not seen get the cold-start list.
            n: list length (shorter only if fewer items are available).
            available: ids of the items that may be shown; default: the items flagged ``available`` at
                training time. Unavailable and unknown items never appear.
            hour: local hour of day (0-23): known customers get the menu of that day-part (:mod:`.dayparts`),
                unknown ones the cold-start list of that hour (ignored for day-resolution data).
            store: store id for the cold-start list (if the interactions had a ``store`` column).
            explain: compute ``Pick.reasons`` (costs ~0.1 ms per pick; False for bulk evaluation).
            exclude: ``{customer: item ids}`` never offered to that customer (e.g. items they disliked).
            segments: ``{customer: ["<column>:<value>", ...]}`` recorded segment values (age group, area) of
                customers the model does not know: their cold-start list blends in what that segment buys
                (:mod:`.segments`).

        Returns:
            ``{customer: [Pick, ...]}`` best first, at most ``config.max_per_category`` per category (more for
            a category that makes up a large share of the available items, see :meth:`_caps`).
        """
        mask = self._available_mask(available)
        result: dict[str, list[Pick]] = {}
        ids = list(dict.fromkeys(str(c) for c in customers))
        known = [(c, self._customer_index[c]) for c in ids if c in self._customer_index]
        for start in range(0, len(known), _BATCH):
            batch = known[start:start + _BATCH]
            rows = np.array([r for _, r in batch], dtype=np.int64)
            scores, z, nn = self._score_block(rows)
            shift = self._daypart_shift(rows, hour)
            if shift is not None:
                scores += shift
            for j, (cust, _) in enumerate(batch):
                cols = self._excluded(exclude, cust)
                scores[j, cols], z[j, cols] = -np.inf, -np.inf
            ranked = self._with_new_items(self._ranked(scores, mask, n), z, mask, n)
            local = np.repeat(np.arange(len(rows)), [len(p) for p in ranked])
            cols = np.array([k for p in ranked for k in p], dtype=np.int64)
            nn_picks = None if nn is None else nn[local, cols]
            reasons = self.explain(rows[local], cols, z[local, cols], nn_picks) if explain else [[] for _ in cols]
            if explain and shift is not None:  # true words only: the customer's own baskets, else the item's
                texts = self.dayparts.reasons(rows[local], cols, int(daypart_of(hour)),
                                              shift[local, cols] / self.config.daypart_weight, self.history.item_group)
                for m, text in enumerate(texts):
                    if text is not None:
                        reasons[m] = [text, *reasons[m]][:3]
            pos = 0
            for j, ((cust, _), picked) in enumerate(zip(batch, ranked, strict=True)):
                values = scores[j, picked].tolist()
                result[cust] = [Pick(self._item_names[k], values[m], reasons[pos + m]) for m, k in enumerate(picked)]
                pos += len(picked)
        cold = [c for c in ids if c not in self._customer_index]
        if cold:
            base, base_reason = self.popularity.shares(store, hour)
            common = self._ranked(base[None, :], mask, n)[0]
            for c in cold:
                cols = self._excluded(exclude, c)
                picked, shares, reason = common, base, base_reason
                values = (segments or {}).get(c) or []
                seg = self.segments.shares(values, base, self.config.segment_smoothing) if self.segments else None
                if seg is not None:
                    shares = seg
                    named = self.segments.known(values)  # only values with purchases behind them: a true reason
                    reason = "popular with customers like you (" + ", ".join(v.split(":", 1)[-1] for v in named) + ")"
                if len(cols) or seg is not None:
                    own = shares.copy()
                    own[cols] = -np.inf
                    picked = self._ranked(own[None, :], mask, n)[0]
                result[c] = [Pick(str(self.items[k]), float(shares[k]), [reason]) for k in picked]
        return {c: result[c] for c in ids}

    def _daypart_shift(self, rows: np.ndarray, hour: int | None) -> np.ndarray | None:
        """``(len(rows), n_items)`` day-part term ``γ · log-ratio`` (:mod:`.dayparts`), or None (no hour, no
        time-of-day data, or ``config.daypart_weight`` 0)."""
        if hour is None or self.dayparts is None or not self.config.daypart_weight:
            return None
        adj = self.dayparts.adjustment(rows, int(daypart_of(hour)), self.config.daypart_smoothing)
        return self.config.daypart_weight * adj

    def _excluded(self, exclude: Mapping[str, Collection[str]] | None, customer: str) -> np.ndarray:
        """Item indices ``exclude`` names for ``customer`` (unknown item ids are ignored)."""
        if not exclude or customer not in exclude:
            return np.zeros(0, dtype=np.int64)
        return np.array([self._item_index[i] for i in map(str, exclude[customer]) if i in self._item_index],
                        dtype=np.int64)

    def cold_start(self, n: int = 10, *, available: set[str] | None = None, hour: int | None = None,
                   store: str | None = None) -> list[Pick]:
        """The list an unknown customer gets (popular at this store and time of day)."""
        return self.recommend(["\x00unknown"], n, available=available, hour=hour, store=store)["\x00unknown"]

    # --- persistence ----------------------------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Write the model to ``directory/<version>/`` (``arrays.npz`` + ``meta.json``, no pickle).

        Returns the model folder. Raises FileExistsError if that version is already saved there.
        """
        from .persist import save_model

        return save_model(self, Path(directory))

    @classmethod
    def load(cls, path: Path) -> Recommender:
        """Read a model folder written by :meth:`save` (the folder that :meth:`save` returned).

        Raises:
            FileNotFoundError: if ``path`` has no ``meta.json``/``arrays.npz``.
            ValueError: if the folder was written by an unknown format version.
        """
        from .persist import load_model

        return load_model(cls, Path(path))


from .fit import TRAIN_STEPS, train  # noqa: E402 - fit imports Recommender from this module; re-exported here
