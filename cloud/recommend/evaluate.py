"""Offline evaluation with a time-based split: train on purchases before ``cut``, test on those after.

Metrics over the customers with purchases on both sides of the cut (within the catalogue), relevance =
"bought the item at least once after the cut", lists of length k, averaged over customers:

* precision@k = hits / k; recall@k = hits / |relevant| (Manning, Raghavan & Schütze 2008, ch. 8);
* MAP@k = mean over customers of ``Σ_{j<=k} P@j · rel_j / min(k, |relevant|)`` (the usual truncated AP,
  as in ``ml_metrics.apk``);
* coverage = share of catalogue items that appear in at least one list (Ge et al. 2010, RecSys);
* repeat / explore recall@k (Li et al. 2023, "A Next Basket Recommendation Reality Check", §4): recall@k
  restricted to the relevant items the customer bought before the cut (repeat) or never bought before it
  (explore), each averaged over the customers that have such items.

Rows: global popularity (purchase lines before the cut); own-frequency "buy again" (the customer's own
purchase-line counts, ties and the rest of the list by popularity); the published next-basket baselines of
:mod:`.baselines` — basket frequency (GP-TopFreq), TIFU-KNN and implicit ALS, their hyper-parameters chosen on
the last ``config.rerank_window_days`` of the training data (never on the test period); LightFM alone (same
features and hyper-parameters, no re-ranker, no category cap); Dangol, the shipped configuration through
:meth:`Recommender.recommend` (re-ranker and category cap included).
"""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pandas as pd

from .baselines import (Baskets, TifuKnn, TifuParams, als_scores, basket_counts, gp_top_freq, popularity_tie, top_k,
                        tune_als, tune_tifu_knn, validation_split)
from .config import RecommenderConfig
from .data import catalogue_before, clean_interactions, restrict_to_top_items
from .dayparts import DAYPART_HOURS, DAYPARTS, daypart_of
from .eval_report import EvaluationReport
from .model import train

#: The published baseline rows (:func:`_baselines`), against which the shipped model is compared.
BASELINE_ROWS = ("basket frequency (GP-TopFreq)", "TIFU-KNN", "implicit ALS")


class NothingToEvaluate(ValueError):
    """The data leave no customer to measure at this cut; the message says why (no customer on both sides of the
    cut, or each bought after it only items first sold then)."""


def ranking_metrics(top: np.ndarray, relevant: np.ndarray, k: int) -> tuple[float, float, float]:
    """(precision@k, recall@k, MAP@k) averaged over rows.

    Args:
        top: ``(n_customers, <= k)`` int item indices, best first (-1 = empty slot).
        relevant: ``(n_customers, n_items)`` bool, items bought after the cut (each row has >= 1).
    """
    hits = _hits(top, relevant, k)
    n_rel = relevant.sum(axis=1)
    precision = hits.sum(axis=1) / k
    recall = hits.sum(axis=1) / n_rel
    ap = (np.cumsum(hits, axis=1) / np.arange(1, k + 1) * hits).sum(axis=1) / np.minimum(k, n_rel)
    return float(precision.mean()), float(recall.mean()), float(ap.mean())


def _hits(top: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """``(n_customers, k)`` bool: whether each slot of ``top`` (-1 = empty) holds a relevant item."""
    if top.shape[1] < k:  # a catalogue smaller than k: the missing slots are empty
        top = np.hstack([top, np.full((len(top), k - top.shape[1]), -1, dtype=top.dtype)])
    valid = top >= 0
    return np.take_along_axis(relevant, np.where(valid, top, 0), axis=1) & valid


def paired_ratio_interval(hits_a: np.ndarray, hits_b: np.ndarray, *, level: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, low, high)``: ``Σ hits_a / Σ hits_b`` (the ratio of two methods' precision@k on the same customers)
    and its percentile bootstrap interval, resampling customers with replacement so both methods keep their
    pairing (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13); resamples in which the second
    method has no hit are left out.

    Args:
        hits_a, hits_b: ``(n_customers,)`` hits in each customer's list for the two methods.

    Raises:
        ValueError: different lengths, no customers, or ``hits_b`` sums to 0.
    """
    a, b = np.asarray(hits_a, np.float64), np.asarray(hits_b, np.float64)
    if len(a) != len(b) or len(a) == 0 or b.sum() == 0:
        raise ValueError("need the same, non-empty customers and a non-zero second method")
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    num, den = a[draws].sum(axis=1), b[draws].sum(axis=1)
    ratios = num[den > 0] / den[den > 0]  # a resample without any hit of the second method has no ratio
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(a.sum() / b.sum()), float(low), float(high)


def repeat_explore_recall(top: np.ndarray, relevant: np.ndarray, bought_before: np.ndarray) -> tuple[float, float]:
    """(repeat recall, explore recall) of the lists ``top`` ``(n, k)`` (-1 = empty slot).

    Args:
        relevant: ``(n, n_items)`` bool, bought after the cut.
        bought_before: ``(n, n_items)`` bool, bought before the cut.

    Returns:
        Mean over customers with >= 1 relevant repeat (explore) item of hits among those items / their
        number (Li et al. 2023, §4); NaN when no customer has such items.
    """
    rows, slots = np.nonzero(top >= 0)  # only the filled slots: a -1 must not unmark item 0 shown earlier
    shown = np.zeros_like(relevant)
    shown[rows, top[rows, slots]] = True
    out = []
    for part in (relevant & bought_before, relevant & ~bought_before):
        n = part.sum(axis=1)
        has = n > 0
        out.append(float(((shown & part).sum(axis=1)[has] / n[has]).mean()) if has.any() else float("nan"))
    return out[0], out[1]


def evaluate(interactions: pd.DataFrame, items: pd.DataFrame | None = None, *, cut: datetime,
             top_items: int | None = None, k: int = 10, config: RecommenderConfig | None = None,
             customer_features: pd.DataFrame | None = None, baselines: bool = True,
             segments: pd.DataFrame | None = None) -> EvaluationReport:
    """Train on purchases before ``cut`` and measure the top-``k`` lists against purchases from ``cut`` on.

    Args:
        interactions, items, customer_features: as for :func:`~dangol_cloud.recommend.train`.
        cut: split time; training data strictly before it, test data at or after it.
        top_items: keep only the N items with most purchase lines before the cut (a menu-sized catalogue); k: length.
        config: the shipped configuration (default :class:`RecommenderConfig()`).
        baselines: also run the published baselines (GP-TopFreq, TIFU-KNN, implicit ALS).
        segments: customer segments (``customer`` + columns such as ``AGE_GROUP``, ``PIN_CODE``): adds the
            cold-start rows, measured on the customers whose first purchase is after the cut.

    Returns:
        An :class:`EvaluationReport` with rows "popularity", "own-frequency", ["basket frequency
        (GP-TopFreq)", "TIFU-KNN", "implicit ALS"], "LightFM alone", "Dangol (hybrid)", [the two day-part rows (data
        with times of day)], [the two cold-start rows (``segments``)]. A customer, (customer, day-part) or new customer
        who bought after the cut only items first sold then is left out of its rows, and a note counts them.

    Raises:
        NothingToEvaluate: (a ValueError) no customer has purchases on both sides of the cut, or every such customer
            bought after it only items first sold at or after it (no list made before the cut can hold them, so
            their recall would be NaN: :func:`_findable`). Raised before any training.
        ValueError: as :func:`~dangol_cloud.recommend.train` for malformed frames.
    """
    cfg = config or RecommenderConfig()
    cut = pd.Timestamp(cut)
    df = clean_interactions(interactions)
    catalogue = catalogue_before(interactions, items, cut)  # nothing of the test period: not its items, not its prices
    if top_items is not None:
        df, catalogue = restrict_to_top_items(df, catalogue, top_items, before=cut)
    train_df, test_df = df[df["ts"] < cut], df[df["ts"] >= cut]
    catalogue = catalogue.assign(available=True)  # the evaluation asks what the customer buys, not what is in stock
    evaluated = np.array(sorted(set(train_df["customer"]) & set(test_df["customer"])), dtype=str)
    if len(evaluated) == 0:
        raise NothingToEvaluate(f"nothing to evaluate: no customer has purchases both before and after "
                                f"{cut:%Y-%m-%d}")
    _findable(train_df, test_df, catalogue, evaluated, cut)

    t0 = time.perf_counter()
    model = train(train_df, catalogue, config=cfg, customer_features=customer_features, segments=segments)
    train_seconds = time.perf_counter() - t0
    items_index = pd.Index(model.items)
    n_items = len(model.items)
    rows = pd.Index(model.customers).get_indexer(evaluated)
    test_eval = test_df[test_df["customer"].isin(set(evaluated))]
    relevant = np.zeros((len(evaluated), n_items), bool)
    ti = items_index.get_indexer(test_eval["item"])
    relevant[pd.Index(evaluated).get_indexer(test_eval["customer"])[ti >= 0], ti[ti >= 0]] = True
    keep = relevant.any(axis=1)  # bought only items new after the cut: nothing the lists could find (no NaN recall)
    notes = [f"{int((~keep).sum()):,} customers left out: only new items bought after the cut"][bool(keep.all()):]
    evaluated, rows, relevant = evaluated[keep], rows[keep], relevant[keep]
    test_eval = test_eval[test_eval["customer"].isin(set(evaluated))]
    bought_before = model.history.lines[rows].toarray() > 0

    popularity = model.history.item_lines.astype(np.float64)
    pop_rank = np.argsort(-popularity, kind="stable")
    tie = np.empty(n_items)
    tie[pop_rank] = 1.0 - np.arange(n_items) / n_items  # in (0, 1]: breaks count ties by popularity

    def ranked(scores: np.ndarray) -> np.ndarray:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    methods: dict[str, tuple[np.ndarray, float, float]] = {}  # name -> (lists, train s, score s)
    clock = time.perf_counter()
    methods["popularity"] = (np.tile(pop_rank[:k], (len(rows), 1)), 0.0, time.perf_counter() - clock)
    clock = time.perf_counter()
    own = model.history.lines[rows].toarray().astype(np.float64) + tie[None, :]
    methods["own-frequency"] = (ranked(own), 0.0, time.perf_counter() - clock)
    if model.stage2 is not None:
        notes.append(f"Dangol second stage: blend λ={model.stage2.blend:g} over {model.stage2.candidates} candidates, "
                     "chosen on held-out customers of the training window (precision@10 by λ: "
                     + ", ".join(f"{b} {p:.4f}" for b, p in model.stage2.validation.items()) + ")")
    if baselines:
        for name, (lists, fit_s, score_s, note) in _baselines(train_df, model.customers, model.items, rows, k,
                                                              cfg.rerank_window_days).items():
            methods[name] = (lists, fit_s, score_s)
            notes.append(note)
    clock = time.perf_counter()
    methods["LightFM alone"] = (ranked(model.factors.scores(rows)), float("nan"), time.perf_counter() - clock)

    t0 = time.perf_counter()
    picks = model.recommend(list(evaluated), n=k, explain=False)
    score_seconds = time.perf_counter() - t0
    shipped = np.full((len(rows), k), -1, dtype=np.int64)
    for r, cust in enumerate(evaluated):
        idx = items_index.get_indexer([p.item for p in picks[cust]])
        shipped[r, : len(idx)] = idx
    methods["Dangol (hybrid)"] = (shipped, train_seconds, score_seconds)
    daypart_rows, dropped = _daypart_methods(model, test_eval, evaluated, shipped, bought_before, k)
    notes += [f"{dropped:,} (customer, day-part) row{'s' if dropped != 1 else ''} left out: only new items bought "
              "in it after the cut"][:dropped]
    if segments is not None:
        cold_rows, dropped = _cold_start_methods(model, test_df, segments, k)
        daypart_rows.update(cold_rows)
        notes += [f"{dropped:,} new customer{'s' if dropped != 1 else ''} left out of the cold-start rows: only new "
                  "items bought after the cut"][:dropped]

    report = EvaluationReport(k=k, cut=cut.to_pydatetime(), n_items=n_items, n_train_interactions=len(train_df),
                              train_seconds=train_seconds, score_seconds=score_seconds,
                              model_version=model.version, notes=notes)
    for name, (top, fit_s, score_s) in methods.items():
        p, r, m = ranking_metrics(top, relevant, k)
        rep, expl = repeat_explore_recall(top, relevant, bought_before)
        coverage = len(np.unique(top[top >= 0])) / n_items
        report.rows.append({"method": name, f"precision@{k}": p, f"recall@{k}": r, f"MAP@{k}": m,
                            f"repeat R@{k}": rep, f"explore R@{k}": expl, "coverage": coverage,
                            "n_customers": len(rows), "train s": fit_s, "score s": score_s})
    for name, (top, relevant_d, before_d, score_s) in daypart_rows.items():
        p, r, m = ranking_metrics(top, relevant_d, k)
        rep, expl = repeat_explore_recall(top, relevant_d, before_d)
        report.rows.append({"method": name, f"precision@{k}": p, f"recall@{k}": r, f"MAP@{k}": m,
                            f"repeat R@{k}": rep, f"explore R@{k}": expl,
                            "coverage": len(np.unique(top[top >= 0])) / n_items, "n_customers": len(top),
                            "train s": float("nan"), "score s": score_s})
    baseline_rows = [r for r in report.rows if r["method"] in BASELINE_ROWS]
    best = max(baseline_rows, key=lambda r: r[f"precision@{k}"]) if baseline_rows else None
    if best is not None and best[f"precision@{k}"] > 0:  # a ratio needs a baseline with at least one hit
        best = best["method"]
        ratio, low, high = paired_ratio_interval(_hits(shipped, relevant, k).sum(axis=1),
                                                 _hits(methods[best][0], relevant, k).sum(axis=1))
        report.comparison = {"baseline": best, "ratio": ratio, "low": low, "high": high}
        report.notes.append(f"Dangol / best baseline ({best}) precision@{k}: × {ratio:.3f}, 95 % paired bootstrap "
                            f"interval {low:.3f}-{high:.3f} over the {len(rows):,} customers")
    if any("day-part" in name for name in daypart_rows):
        report.notes.append("day-part rows: one row per (customer, day-part with purchases after the cut of an item "
                            "sold before it), relevance = items bought in that day-part (breakfast 5-10 h, lunch "
                            "11-13, afternoon 14-16, evening 17-4)")
    if any(name.startswith("cold start") for name in daypart_rows):
        report.notes.append("cold-start rows: customers whose first purchase is after the cut (of an item sold "
                            "before it); repeat R is NaN "
                            "(nothing bought before)")
    return report


def _findable(train_df: pd.DataFrame, test_df: pd.DataFrame, catalogue: pd.DataFrame, evaluated: np.ndarray,
              cut: pd.Timestamp) -> None:
    """Check that some ``evaluated`` customer bought after the cut an item the model will know: one of
    ``catalogue`` or of ``train_df`` (the items :func:`~dangol_cloud.recommend.train` indexes). The others are left
    out of the metrics later (a note counts them); when that is everyone there is nothing to measure.

    Raises:
        NothingToEvaluate: no such customer; the message gives the customers' and the new items' numbers.
    """
    known = set(catalogue["item"]) | set(train_df["item"])
    after = test_df[test_df["customer"].isin(set(evaluated))]
    if after["item"].isin(known).any():
        return
    n, new = len(evaluated), after["item"].nunique()
    raise NothingToEvaluate(
        f"nothing to evaluate: the {n:,} customer{'s' if n != 1 else ''} with purchases on both sides of the cut "
        f"({cut:%Y-%m-%d}) bought after it only items first sold on or after it ({new:,} such "
        f"item{'s' if new != 1 else ''}), which no list made before the cut can hold; choose a later cut")


def _relevant(model, customers: np.ndarray, lines: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(customers kept, relevant)``: ``relevant`` ``(n_kept, n_items)`` bool marks the items of ``model`` each
    customer bought in ``lines``; customers without any such item (they bought only items first sold after the cut:
    nothing a list can find, recall 0/0) are left out, as the main rows leave them out."""
    relevant = np.zeros((len(customers), len(model.items)), bool)
    ti = pd.Index(model.items).get_indexer(lines["item"])
    relevant[pd.Index(customers).get_indexer(lines["customer"])[ti >= 0], ti[ti >= 0]] = True
    keep = relevant.any(axis=1)
    return customers[keep], relevant[keep]


def _cold_start_methods(model, test_df: pd.DataFrame, segments: pd.DataFrame, k: int
                        ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]], int]:
    """Cold-start lists of the customers whose first purchase is after the cut: popularity (chain-wide, all day: no
    store or hour is passed) vs segment-aware (:mod:`.segments`); same return shape as :func:`_daypart_methods` (the
    count left out: new customers who bought only items first sold after the cut)."""
    from .segments import segment_values

    new = np.array(sorted(set(test_df["customer"]) - set(model.customers)), dtype=str)
    n_new = len(new)
    new, relevant = _relevant(model, new, test_df[test_df["customer"].isin(set(new))])
    if len(new) == 0:
        return {}, n_new
    items_index = pd.Index(model.items)
    values = segment_values(segments)
    out = {}
    for name, given in (("cold start: popularity, new customers", None), ("cold start: segment-aware, new customers",
                                                                          values)):
        t0 = time.perf_counter()
        picks = model.recommend(list(new), n=k, explain=False, segments=given)
        seconds = time.perf_counter() - t0
        top = np.full((len(new), k), -1, dtype=np.int64)
        for r, cust in enumerate(new):
            idx = items_index.get_indexer([p.item for p in picks[cust]])
            top[r, : len(idx)] = idx
        out[name] = (top, relevant, np.zeros_like(relevant), seconds)
    return out, n_new - len(new)


def _daypart_methods(model, test_eval: pd.DataFrame, evaluated: np.ndarray, shipped: np.ndarray,
                     bought_before: np.ndarray, k: int
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]], int]:
    """Hour-blind vs day-part menus against what each customer bought in each day-part after the cut.

    Returns ``({row name: (lists, relevant, bought_before, score seconds)}, left out)`` over (customer, day-part)
    pairs with at least one item the model knows (``left out``: the pairs with none, only items first sold after
    the cut), or ``({}, 0)`` for data without time of day (or a model without day-part profile).
    """
    if model.dayparts is None or test_eval.loc[test_eval["hour"] >= 0, "hour"].nunique() <= 1:
        return {}, 0
    items_index = pd.Index(model.items)
    cust_pos = pd.Index(evaluated)
    parts = daypart_of(test_eval["hour"].to_numpy())
    blind, aware, relevant, before = [], [], [], []
    clock, dropped = 0.0, 0
    for d, (name, _, _) in enumerate(DAYPARTS):
        sub = test_eval[parts == d]
        customers = np.array(sorted(sub["customer"].unique()), dtype=str)
        kept, rel = _relevant(model, customers, sub)
        dropped += len(customers) - len(kept)
        if len(kept) == 0:
            continue
        customers = kept
        pos = cust_pos.get_indexer(customers)
        t0 = time.perf_counter()
        picks = model.recommend(list(customers), n=k, hour=DAYPART_HOURS[name], explain=False)
        clock += time.perf_counter() - t0
        top = np.full((len(customers), k), -1, dtype=np.int64)
        for r, cust in enumerate(customers):
            idx = items_index.get_indexer([p.item for p in picks[cust]])
            top[r, : len(idx)] = idx
        blind.append(shipped[pos])
        aware.append(top)
        relevant.append(rel)
        before.append(bought_before[pos])
    if not relevant:
        return {}, dropped
    rel_all, before_all = np.vstack(relevant), np.vstack(before)
    return {"Dangol hour-blind, per day-part": (np.vstack(blind), rel_all, before_all, float("nan")),
            "Dangol day-part menus, per day-part": (np.vstack(aware), rel_all, before_all, clock)}, dropped


def _baselines(train_df: pd.DataFrame, customers: np.ndarray, items: np.ndarray, rows: np.ndarray, k: int,
               window_days: int) -> dict[str, tuple[np.ndarray, float, float, str]]:
    """GP-TopFreq, TIFU-KNN and implicit ALS lists ``(len(rows), k)`` for the customer indices ``rows``,
    with fit and score seconds and a note naming the settings chosen on the validation split (the last
    ``window_days`` days of ``train_df``)."""
    shape = (len(customers), len(items))
    u = pd.Index(customers).get_indexer(train_df["customer"])
    i = pd.Index(items).get_indexer(train_df["item"])
    day = train_df["day"].to_numpy(np.int64)
    out = {}
    clock = time.perf_counter()
    baskets = Baskets.build(u, i, day, shape)
    tie = popularity_tie(np.asarray(basket_counts(baskets).sum(axis=0)).ravel())
    split = validation_split(u, i, day, shape, window_days)
    fit_s = time.perf_counter() - clock
    clock = time.perf_counter()
    out["basket frequency (GP-TopFreq)"] = (top_k(gp_top_freq(baskets, rows), k, tie), fit_s,
                                            time.perf_counter() - clock, "GP-TopFreq: no settings")
    clock = time.perf_counter()
    if split is not None:
        params, val_p, _ = tune_tifu_knn(split.past, split.rows, split.labels, k, split.tie)
        note = (f"TIFU-KNN m={params.group_size} r_b={params.r_b} r_g={params.r_g} k={params.neighbours} "
                f"alpha={params.alpha} (validation P@{k} {val_p:.4f})")
    else:
        params, note = TifuParams(), "TIFU-KNN: training data too short to validate, the authors' defaults"
    knn = TifuKnn.fit(baskets, params.group_size, params.r_b, params.r_g, params.neighbours, rows=rows)
    fit_s = time.perf_counter() - clock
    clock = time.perf_counter()
    out["TIFU-KNN"] = (top_k(knn.scores(rows, params.neighbours, params.alpha), k, tie), fit_s,
                       time.perf_counter() - clock, note)
    clock = time.perf_counter()
    als, val_p = tune_als(split, k) if split is not None else ({}, float("nan"))
    counts = basket_counts(baskets)
    lists = top_k(als_scores(counts, rows, **als), k, tie)
    out["implicit ALS"] = (lists, time.perf_counter() - clock, float("nan"),
                           "ALS " + " ".join(f"{a}={b}" for a, b in als.items()) + f" (validation P@{k} {val_p:.4f})")
    return out
