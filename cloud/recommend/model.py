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
from .dayparts import DAYPARTS, DayPartProfile, daypart_of
from .factors import Factors
from .history import History, PopularityTable
from .rerank import LIGHTFM, NEIGHBOURS, PERSONAL, Reranker, pair_features
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


def _feature_text(name: str) -> str:
    kind, _, value = name.partition(":")
    return {
        "category": f"category {value}",
        "tag": f"tagged {value}",
        "price": f"price band {value.replace('/', ' of ')}",
        "item": "customers with your taste buy it",
    }.get(kind, name)


class Recommender:
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
                 segments: SegmentTable | None = None):
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
        self.meta = meta or {}
        self._customer_index = {c: k for k, c in enumerate(customers)}
        self._item_index = {c: k for k, c in enumerate(items)}
        self._new = np.asarray(history.item_lines) == 0  # items nobody bought before training
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
        TIFU-KNN part); see :meth:`score_matrix`."""
        z = self.factors.zscores(rows)
        if self.reranker is None:
            return z, z, None
        w = self.reranker.weights
        scores = z * w[LIGHTFM]
        nn = self._neighbours(rows)
        if nn is not None:
            scores += w[NEIGHBOURS] * nn
        scores += (self.reranker.intercept + w[4] * self.item_pop + w[5] * self.item_rep
                   + w[11] * self.history.item_trend())[None, :]
        scores += (w[7] * np.log1p(self.history.visits[rows].astype(np.float64)))[:, None]
        bought = self.history.visits_with_item[rows].tocoo()
        if bought.nnz:
            x = pair_features(self.history, self.item_pop, self.item_rep, z[bought.row, bought.col],
                              rows[bought.row], bought.col)
            scores[bought.row, bought.col] += x[:, list(PERSONAL)] @ w[list(PERSONAL)]
        return scores, z, nn

    def score_matrix(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), n_items)`` float64 scores for known customer indices ``rows`` (higher = better).

        Hybrid: the re-ranker logit; with ``config.rerank=False``: the per-customer LightFM z-score.
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

    def _caps(self, mask: np.ndarray, n: int) -> np.ndarray | None:
        """Per category code, the most items of that category a list of ``n`` may hold (None = no cap).

        ``cap_c = max(max_per_category, ceil(category_share_factor · n · share_c))`` where ``share_c`` is the
        category's share of the available items: a category that IS most of the menu (Complete Journey's
        GROCERY department holds 60 of the 100 best sellers) may fill its share of the list.
        """
        base = self.config.max_per_category
        if base is None:
            return None
        codes = self._category_code[mask & (self._category_code >= 0)]
        n_codes = int(self._category_code.max()) + 1 if len(self._category_code) else 0
        share = np.bincount(codes, minlength=n_codes) / max(int(mask.sum()), 1)
        return np.maximum(base, np.ceil(self.config.category_share_factor * n * share - 1e-9)).astype(np.int64)

    def _top(self, order: np.ndarray, n: int, caps: np.ndarray | None) -> list[int]:
        """First ``n`` of ``order`` (item indices, best first) with at most ``caps[c]`` items of category c."""
        if caps is None:
            return [int(k) for k in order[:n]]
        picked, used = [], {}
        for k in order:
            code = self._category_code[k]
            if code >= 0:
                if used.get(code, 0) >= caps[code]:
                    continue
                used[code] = used.get(code, 0) + 1
            picked.append(int(k))
            if len(picked) == n:
                break
        return picked

    def _ranked(self, scores: np.ndarray, mask: np.ndarray, n: int) -> list[list[int]]:
        """Per row of ``scores`` ``(rows, n_items)``, the best ``n`` available item indices under the category cap.

        Only the best ``4 n + 20`` items of a row are sorted (``argpartition``); a row whose cap leaves
        fewer than ``n`` of them is re-ranked over the whole catalogue.
        """
        scores = np.where(mask[None, :], scores, -np.inf)
        n_valid = int(mask.sum())
        if n_valid == 0 or n <= 0:
            return [[] for _ in range(len(scores))]
        caps = self._caps(mask, n)
        capped = caps is not None

        def order_of(block: np.ndarray, width: int) -> np.ndarray:
            if width < block.shape[1]:
                part = np.argpartition(-block, width - 1, axis=1)[:, :width]
            else:
                part = np.tile(np.arange(block.shape[1]), (len(block), 1))
            part_scores = np.take_along_axis(block, part, axis=1)
            return np.take_along_axis(part, np.argsort(-part_scores, axis=1, kind="stable"), axis=1)

        width = min(n_valid, 4 * n + 20 if capped else n)
        out = []
        for j, row in enumerate(order_of(scores, width)):
            picked = self._top(row[np.isfinite(scores[j, row])], n, caps)
            if len(picked) < min(n, n_valid) and width < n_valid:
                row = order_of(scores[j:j + 1], n_valid)[0]
                picked = self._top(row[np.isfinite(scores[j, row])], n, caps)
            out.append(picked)
        return out

    def _with_new_items(self, ranked: list[list[int]], z: np.ndarray, mask: np.ndarray, n: int) -> list[list[int]]:
        """Give up to ``config.new_item_slots`` places at the end of each list to available items nobody has
        bought yet whose LightFM z-score (from metadata alone) is at least ``config.new_item_min_z``.

        A re-ranker fitted on past purchases cannot rate an item without purchases, so new menu items
        get this explicit exploration slot (best LightFM match first); the category cap still holds.
        """
        slots = min(self.config.new_item_slots, n)
        candidates = self._new & mask
        if slots <= 0 or not candidates.any():
            return ranked
        new_cols = np.flatnonzero(candidates)
        caps = self._caps(mask, n)
        out = []
        for j, picked in enumerate(ranked):
            zs = z[j, new_cols]
            good = [int(c) for c in new_cols[np.argsort(-zs, kind="stable")] if z[j, c] >= self.config.new_item_min_z]
            if not good:
                out.append(picked)
                continue
            head = [k for k in picked if k not in good][: max(n - slots, 0)]
            used: dict[int, int] = {}
            for k in head:
                used[self._category_code[k]] = used.get(self._category_code[k], 0) + 1
            added = []
            for c in good:
                code = self._category_code[c]
                if code >= 0 and caps is not None and used.get(code, 0) >= caps[code]:
                    continue
                used[code] = used.get(code, 0) + 1
                added.append(c)
                if len(added) == slots:
                    break
            rest = [k for k in picked if k not in head and k not in added]
            out.append((head + added + rest)[:n] if len(head) + len(added) < n else head + added)
        return out

    # --- explanations -----------------------------------------------------------------------------------

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

        Args:
            rows, cols: ``(n_picks,)`` int customer and item indices.
            z: ``(n_picks,)`` LightFM z-scores of the picks if already computed.
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
        times = np.rint(np.expm1(x[:, 0])).astype(np.int64).tolist()
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

    # --- public API ---------------------------------------------------------------------------------

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
            if explain and shift is not None:
                name = DAYPARTS[int(daypart_of(hour))][0]
                for m, value in enumerate(shift[local, cols] / self.config.daypart_weight):
                    if value > np.log(1.5):  # bought at least 1.5 times as often at this day-part as on average
                        reasons[m] = [f"you often have it at {name}", *reasons[m]][:3]
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
                    reason = "popular with customers like you (" + ", ".join(v.split(":", 1)[-1] for v in values) + ")"
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
