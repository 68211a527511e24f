"""Training the Dangol recommender: the re-ranker's label window, LightFM, TIFU-KNN, statistics.

:func:`train` builds a :class:`~dangol_cloud.recommend.model.Recommender` (see that module for serving).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .baselines import Baskets, TifuKnn
from .config import RecommenderConfig
from .data import clean_interactions, clean_items
from .dayparts import DayPartProfile
from .factors import Factors, factors_of, fit_lightfm
from .features import customer_feature_matrix, item_feature_matrix
from .history import (History, PopularityTable, build_history, decayed_counts, group_visit_counts, item_groups,
                      pair_values)
from .model import _BATCH, Recommender
from .rerank import Reranker, item_statistics, pair_features, sample_pairs
from .scoring import Stage2
from .segments import SegmentTable, segment_values
from .stage2 import fit_stage2

__all__ = ["TRAIN_STEPS", "LabelWindow", "index_purchases", "label_window_starts", "train"]

#: Steps of :func:`train` in order; its ``progress`` callback is called with each name as the step starts.
TRAIN_STEPS = ("clean", "re-ranker", "factors", "history")


def _coo(u: np.ndarray, i: np.ndarray, shape: tuple[int, int]) -> sp.coo_matrix:
    return sp.coo_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape)


@dataclass
class LabelWindow:
    """One label window carved from the training data: features from purchases before ``start`` (day
    number), labels = bought in ``[start, end)``; the customers split into the fit part ``rows`` and the
    held-out part ``hold`` (int64 customer indices), ``labels`` ``(n_customers, n_items)`` CSR."""

    start: int
    history: History
    pop: np.ndarray
    rep: np.ndarray
    factors: Factors
    lightfm: object  # lightfm.LightFM, continued by the final fit (warm start)
    rows: np.ndarray
    hold: np.ndarray
    labels: sp.csr_matrix


def _label_window(u, i, day, shape, start, end, item_x, user_x, categories, cfg: RecommenderConfig, ignored,
                  rng: np.random.Generator, bought: np.ndarray | None = None) -> LabelWindow | None:
    """Statistics and TIFU-KNN from the purchases before day ``start``, LightFM from every interaction before it;
    labels from ``[start, end)`` (feedback rows too). ``bought``: ``(n_lines,)`` bool, the lines that are purchases
    (default all; the others are feedback, see :mod:`.data`). None when either side is empty or fewer than 20
    customers are active on both."""
    past, window = day < start, (day >= start) & (day < end)
    bought_past = past if bought is None else past & bought
    if bought_past.sum() == 0 or window.sum() == 0:
        return None
    hist = build_history(u[bought_past], i[bought_past], day[bought_past], shape, start, cfg.recency_half_life_days)
    if not cfg.item_trend:
        hist.item_recent = None
    if ignored is not None:
        hist.ignored = decayed_counts(*ignored, shape, start, cfg.recency_half_life_days)
    labels = _coo(u[window], i[window], shape).tocsr()
    eligible = np.flatnonzero((hist.visits > 0) & (np.diff(labels.indptr) > 0))
    if len(eligible) < 20:
        return None
    lightfm = fit_lightfm(_coo(u[past], i[past], shape), item_x, user_x, cfg)
    factors = factors_of(lightfm, item_x, user_x)
    pop, rep = item_statistics(hist, categories)
    rows = np.sort(rng.choice(eligible, size=min(cfg.rerank_max_customers, len(eligible)), replace=False))
    hold = np.zeros(0, dtype=np.int64)
    if cfg.stage2 and len(rows) >= 40:
        held = rng.random(len(rows)) < cfg.stage2_holdout
        rows, hold = rows[~held], rows[held]
    hist.tifu = _tifu(u[bought_past], i[bought_past], day[bought_past], shape, cfg, np.concatenate([rows, hold]))
    return LabelWindow(start, hist, pop, rep, factors, lightfm, rows, hold, labels)


def _window_pairs(w: LabelWindow, cfg: RecommenderConfig, rng: np.random.Generator):
    """The re-ranker's sampled pairs of one window: features ``(n, F)``, labels ``(n,)`` bool, weights ``(n,)``."""
    hist, rows = w.history, w.rows
    pr, pc, pw = sample_pairs(hist, rows, cfg.rerank_negatives, rng)
    z, nn = np.empty(len(pr)), np.zeros(len(pr))
    position = np.searchsorted(rows, pr)
    for start in range(0, len(rows), _BATCH):
        block_rows = rows[start:start + _BATCH]
        sel = (position >= start) & (position < start + _BATCH)
        z[sel] = w.factors.zscores(block_rows)[position[sel] - start, pc[sel]]
        if hist.tifu is not None:
            nn[sel] = hist.tifu.neighbour_mean(block_rows, cfg.tifu_neighbours)[position[sel] - start, pc[sel]]
    return pair_features(hist, w.pop, w.rep, z, pr, pc, nn), pair_values(w.labels, pr, pc) > 0, pw


def label_window_starts(end_day: int, cfg: RecommenderConfig) -> list[int]:
    """Start days of the label windows, latest first: ``end - rerank_window_days``, then each
    ``rerank_window_stride_days`` earlier, ``rerank_windows`` in all (each window ``rerank_window_days`` long)."""
    first = end_day - cfg.rerank_window_days
    return [first - k * cfg.rerank_window_stride_days for k in range(cfg.rerank_windows)]


def _fit_reranker(u, i, day, shape, end_day, item_x, user_x, categories, cfg: RecommenderConfig, ignored=None,
                  bought: np.ndarray | None = None) -> tuple[Reranker, object | None, Stage2 | None]:
    """Carve label windows from the end of the training data (:func:`label_window_starts`), fit LightFM +
    statistics on what precedes each, fit the re-ranker on sampled (customer, item) pairs of customers active
    on both sides, pooled over the windows, and, with ``cfg.stage2``, the second stage (:mod:`.stage2`) with
    the blend weight chosen on the windows' held-out customers. Several windows let the fits see more than one
    season (Ta-Feng's last 4 weeks before the test month hold the Chinese New Year).

    ``ignored`` = ``(u, i, day)`` arrays of shown-and-ignored picks (feedback) or None: their decayed counts
    before each window are the soft negatives whose weight the second stage chooses on the held-out customers.
    ``bought``: ``(n_lines,)`` bool, which lines are purchases (default all), see :func:`_label_window`.

    Returns ``(re-ranker, the LightFM model of the latest window or None, second stage or None)``."""
    rng = np.random.default_rng(cfg.random_state)
    windows = []
    for start in label_window_starts(end_day, cfg):
        w = _label_window(u, i, day, shape, start, start + cfg.rerank_window_days, item_x, user_x, categories,
                          cfg, ignored, rng, bought)
        if w is None:
            break
        windows.append(w)
    if not windows:
        return Reranker.fallback(), None, None
    pairs = [_window_pairs(w, cfg, rng) for w in windows]
    x, y, pw = (np.concatenate(parts) for parts in zip(*pairs))
    reranker = Reranker.fit(x, y, pw, sum(len(w.rows) for w in windows))
    stage2 = fit_stage2(windows, reranker, cfg)  # None without held-out customers (or with cfg.stage2 off)
    return reranker, windows[0].lightfm, stage2


def _tifu(u: np.ndarray, i: np.ndarray, day: np.ndarray, shape: tuple[int, int], cfg: RecommenderConfig,
          rows: np.ndarray | None = None) -> TifuKnn | None:
    """TIFU-KNN vectors of every customer and the neighbours of ``rows`` (default all); None if disabled."""
    if not cfg.tifu:
        return None
    return TifuKnn.fit(Baskets.build(u, i, day, shape), cfg.tifu_group_size, cfg.tifu_r_b, cfg.tifu_r_g,
                       cfg.tifu_neighbours, rows=rows, max_dims=cfg.tifu_max_dims)


def _ignored_events(frame: pd.DataFrame | None, customers: np.ndarray, items: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(u, i, day)`` int64 arrays of the shown-and-ignored rows whose customer and item are known, or None."""
    if frame is None or len(frame) == 0:
        return None
    u = pd.Index(customers).get_indexer(frame["customer"].astype(str))
    i = pd.Index(items).get_indexer(frame["item"].astype(str))
    day = pd.to_datetime(frame["ts"]).to_numpy().astype("datetime64[D]").astype(np.int64)
    keep = (u >= 0) & (i >= 0)
    return (u[keep], i[keep], day[keep]) if keep.any() else None


def _version(df: pd.DataFrame, cfg: RecommenderConfig, trained_at: datetime) -> str:
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(df[["customer", "item", "day"]], index=False).to_numpy().tobytes())
    return f"{trained_at:%Y%m%dT%H%M%S}Z-{digest.hexdigest()[:8]}"


def index_purchases(df: pd.DataFrame, catalogue: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                       np.ndarray, list[str | None]]:
    """Integer indices of cleaned purchase lines (:func:`~.data.clean_interactions`) against a cleaned catalogue
    (:func:`~.data.clean_items`): ``(customers, items, u, i, day, categories)`` — the sorted customer ids
    ``(n_customers,)`` str, the catalogue's item ids ``(n_items,)`` str, per line the customer and item index and
    the day number ``(n_lines,)`` int64 (days since 1970-01-01), and each item's category (None if unknown)."""
    item_ids = catalogue["item"].to_numpy(dtype=str)
    customers = np.array(sorted(df["customer"].unique()), dtype=str)
    u = pd.Index(customers).get_indexer(df["customer"])
    i = pd.Index(item_ids).get_indexer(df["item"])
    categories = [c if isinstance(c, str) else None for c in catalogue["category"]]
    return customers, item_ids, u, i, df["day"].to_numpy(np.int64), categories


def train(interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
          config: RecommenderConfig | None = None, customer_features: pd.DataFrame | None = None,
          progress: Callable[[str], None] | None = None, segments: pd.DataFrame | None = None,
          shown_ignored: pd.DataFrame | None = None, menu_item_of: Mapping[str, str | None] | None = None
          ) -> Recommender:
    """Train the recommender.

    Args:
        interactions: purchase lines, columns ``customer`` (str), ``item`` (str), ``ts`` (datetime64[ns]),
            ``quantity`` (float), optional ``store`` (str); rows with quantity <= 0 are ignored. An optional
            ``kind`` column marks feedback rows (``"feedback"``: likes, shown picks bought), which LightFM and the
            re-ranker's labels learn from as positives but which are no purchases or visits (history, day-parts,
            cold-start popularity, segments and reasons ignore them; :mod:`.data`).
        items: the catalogue, columns ``item``, ``category``, ``price`` (float, NaN = unknown), ``tags``
            (list[str]), ``available`` (bool). Items without purchases are scored through their features;
            items only in ``interactions`` are added without metadata.
        config: hyper-parameters (default :class:`RecommenderConfig()`).
        customer_features: optional customer metadata for LightFM, see
            :func:`~dangol_cloud.recommend.features.customer_feature_matrix`.
        progress: called with each step name of :data:`TRAIN_STEPS` as it starts (for a progress bar).
        segments: optional ``customer`` + segment columns (e.g. ``AGE_GROUP``, ``PIN_CODE``) for the
            segment-aware cold start (:mod:`.segments`).
        shown_ignored: optional picks shown and not bought (``customer``, ``item``, ``ts``; feedback, see
            :func:`dangol_cloud.feedback.shown_and_ignored`): soft negatives, weighted as the validation split of
            the training window says (0 when they do not help); rows of unknown customers or items are ignored.
        menu_item_of: optional ``{item id: id of the menu item it is sold as}`` (POS products to menu items,
            :func:`dangol_cloud.menu_mapping.menu_item_map`): the reason "you often buy this (k of your N visits)"
            counts the visits with any item sold as the pick's menu item, the day-part reasons its baskets (distinct
            customer-day-day-part-menu item, :mod:`.dayparts`), and an item counts as sold (no "new on the menu"
            slot) when any item sold as the same menu item was bought. Items absent or mapped to None
            are their own menu item.

    Returns:
        A :class:`Recommender`. On Ta-Feng's 200 best sellers (3 months, 12,969 customers) this takes
        about 10 s on 2 cores (two LightFM fits: one for the re-ranker's label window, one on all data).

    Raises:
        ValueError: if a required column is missing, a ``kind`` is unknown, no interaction has quantity > 0,
            or none of them is a purchase.
    """
    cfg = config or RecommenderConfig()
    step = progress or (lambda name: None)
    step("clean")
    df = clean_interactions(interactions)
    if df.empty:
        raise ValueError("no interactions with quantity > 0 to train on")
    catalogue = clean_items(items, df)
    bought = (df["kind"] == "purchase").to_numpy()
    if not bought.any():
        raise ValueError("no purchases to train on (only feedback rows)")
    customers, item_ids, u, i, day, categories = index_purchases(df, catalogue)
    shape = (len(customers), len(item_ids))
    sold = np.bincount(i[bought], minlength=len(item_ids)) > 0
    item_x, item_names = item_feature_matrix(catalogue, cfg.price_bands, identity=sold)
    user_x, _ = customer_feature_matrix(customers, customer_features)
    end_day = int(day[bought].max()) + 1

    ignored = _ignored_events(shown_ignored, customers, item_ids)
    step("re-ranker")
    reranker, window_lightfm, stage2 = None, None, None
    if cfg.rerank:
        reranker, window_lightfm, stage2 = _fit_reranker(u, i, day, shape, end_day, item_x, user_x, categories, cfg,
                                                         ignored, bought)
    step("factors")
    if window_lightfm is not None and cfg.refit_epochs:  # warm start: continue from the earlier part's fit
        lightfm = fit_lightfm(_coo(u, i, shape), item_x, user_x, cfg, model=window_lightfm, epochs=cfg.refit_epochs)
    else:
        lightfm = fit_lightfm(_coo(u, i, shape), item_x, user_x, cfg)
    factors = factors_of(lightfm, item_x, user_x)
    step("history")
    lines = df[bought]  # the purchase history: no feedback rows from here on
    u, i, day, hour = u[bought], i[bought], day[bought], lines["hour"].to_numpy(np.int64)
    history = build_history(u, i, day, shape, end_day, cfg.recency_half_life_days)
    history.item_group = item_groups(item_ids, menu_item_of)
    if history.item_group is not None:
        history.group_visits = group_visit_counts(u, i, day, history.item_group, len(customers))
    if not cfg.item_trend:
        history.item_recent = None
    if ignored is not None and stage2 is not None and stage2.ignored_weight > 0:
        history.ignored = decayed_counts(*ignored, shape, max(end_day, int(ignored[2].max()) + 1),
                                         cfg.recency_half_life_days)
    history.tifu = _tifu(u, i, day, shape, cfg) if cfg.rerank else None
    pop, rep = item_statistics(history, categories)
    store = lines["store"].to_numpy(dtype=str) if "store" in lines.columns else None
    popularity = PopularityTable.build(i, hour, store, len(item_ids), cfg.cold_start_smoothing)
    dayparts = DayPartProfile.build(u, i, day, hour, shape, item_group=history.item_group)
    segment_table = SegmentTable.build(u, i, customers, segment_values(segments), len(item_ids))
    trained_at = datetime.now(UTC).replace(tzinfo=None)
    meta = {"trained_at": trained_at.isoformat(timespec="seconds"), "n_interactions": len(lines),
            "n_feedback": int((~bought).sum()),
            "n_customers": len(customers), "n_items": len(item_ids),
            "data_from": str(lines["ts"].min()), "data_to": str(lines["ts"].max())}
    return Recommender(version=_version(df, cfg, trained_at), config=cfg, customers=customers, items=item_ids,
                       categories=categories, available=catalogue["available"].to_numpy(bool),
                       item_features=item_x, item_feature_names=item_names, factors=factors, history=history,
                       item_pop=pop, item_rep=rep, reranker=reranker, popularity=popularity, meta=meta,
                       dayparts=dayparts, segments=segment_table, stage2=stage2)
