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
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from .baselines import (Baskets, TifuKnn, TifuParams, als_scores, basket_counts, gp_top_freq, popularity_tie, top_k,
                        tune_als, tune_tifu_knn, validation_split)
from .config import RecommenderConfig
from .data import catalogue_before, clean_interactions, restrict_to_top_items
from .dayparts import DAYPART_HOURS, DAYPARTS, daypart_of
from .model import train

#: The published baseline rows (:func:`_baselines`), against which the shipped model is compared.
BASELINE_ROWS = ("basket frequency (GP-TopFreq)", "TIFU-KNN", "implicit ALS")


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


@dataclass
class EvaluationReport:
    """Offline metrics per method; ``rows`` are dicts with method, precision@k, recall@k, MAP@k,
    coverage, n_customers. ``train_seconds`` / ``score_seconds`` time the shipped model's training and
    its scoring of every evaluated customer. ``comparison`` (with baselines): the shipped model's precision@k over
    the best baseline row's, ``{"baseline", "ratio", "low", "high"}`` (95 % paired bootstrap interval)."""

    k: int
    cut: datetime
    n_items: int
    n_train_interactions: int
    rows: list[dict] = field(default_factory=list)
    train_seconds: float = float("nan")
    score_seconds: float = float("nan")
    model_version: str = ""
    notes: list[str] = field(default_factory=list)
    comparison: dict | None = None

    @property
    def columns(self) -> list[str]:
        k = self.k
        return ["method", f"precision@{k}", f"recall@{k}", f"MAP@{k}", f"repeat R@{k}", f"explore R@{k}", "coverage",
                "n_customers", "train s", "score s"]

    def _cells(self, row: dict) -> list[str]:
        return ([row["method"]] + [f"{row[c]:.4f}" for c in self.columns[1:7]] + [str(row["n_customers"])]
                + [f"{row.get(c, float('nan')):.1f}" for c in ("train s", "score s")])

    def _caption(self) -> str:
        return "; ".join([f"cut {self.cut:%Y-%m-%d}, {self.n_items} items, k={self.k}; train s / score s = seconds to "
                          "fit (incl. tuning on the validation split) / to rank every evaluated customer", *self.notes])

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown table with a one-line caption underneath."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + f"\n\n{self._caption()}\n"

    def to_table(self) -> str:
        """The table rendered with ``rich`` (plain text, no colour codes)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Offline evaluation", caption=self._caption())
        for c in self.columns:
            table.add_column(c, justify="left" if c == "method" else "right")
        for r in self.rows:
            table.add_row(*self._cells(r))
        console = Console(width=160, record=True, force_terminal=False, color_system=None)
        with console.capture() as cap:
            console.print(table)
        return cap.get()

    def row(self, method: str) -> dict:
        """The row of ``method`` (KeyError if absent)."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


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
        (GP-TopFreq)", "TIFU-KNN", "implicit ALS"], "LightFM alone", "Dangol (hybrid)".

    Raises:
        ValueError: if no customer has purchases on both sides of the cut.
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
        raise ValueError(f"no customer has purchases both before and after {cut:%Y-%m-%d}")

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
    daypart_rows = _daypart_methods(model, test_eval, evaluated, shipped, bought_before, k)
    if segments is not None:
        daypart_rows.update(_cold_start_methods(model, test_df, segments, k))

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
        report.notes.append("day-part rows: one row per (customer, day-part with purchases after the cut), relevance "
                            "= items bought in that day-part (breakfast 5-10 h, lunch 11-13, afternoon 14-16, "
                            "evening 17-4)")
    if any(name.startswith("cold start") for name in daypart_rows):
        report.notes.append("cold-start rows: customers whose first purchase is after the cut; repeat R is NaN "
                            "(nothing bought before)")
    return report


def _cold_start_methods(model, test_df: pd.DataFrame, segments: pd.DataFrame, k: int
                        ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Cold-start lists of the customers whose first purchase is after the cut: store/hour popularity vs
    segment-aware (:mod:`.segments`); same return shape as :func:`_daypart_methods`."""
    from .segments import segment_values

    new = np.array(sorted(set(test_df["customer"]) - set(model.customers)), dtype=str)
    if len(new) == 0:
        return {}
    items_index = pd.Index(model.items)
    relevant = np.zeros((len(new), len(model.items)), bool)
    sub = test_df[test_df["customer"].isin(set(new))]
    ti = items_index.get_indexer(sub["item"])
    relevant[pd.Index(new).get_indexer(sub["customer"])[ti >= 0], ti[ti >= 0]] = True
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
    return out


def _daypart_methods(model, test_eval: pd.DataFrame, evaluated: np.ndarray, shipped: np.ndarray,
                     bought_before: np.ndarray, k: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Hour-blind vs day-part menus against what each customer bought in each day-part after the cut.

    Returns ``{row name: (lists, relevant, bought_before, score seconds)}`` over (customer, day-part) pairs,
    or ``{}`` for data without time of day (or a model without day-part profile).
    """
    if model.dayparts is None or test_eval["hour"].nunique() <= 1:
        return {}
    items_index = pd.Index(model.items)
    cust_pos = pd.Index(evaluated)
    parts = daypart_of(test_eval["hour"].to_numpy())
    blind, aware, relevant, before = [], [], [], []
    clock = 0.0
    for d, (name, _, _) in enumerate(DAYPARTS):
        sub = test_eval[parts == d]
        if sub.empty:
            continue
        customers = np.array(sorted(sub["customer"].unique()), dtype=str)
        pos = cust_pos.get_indexer(customers)
        rel = np.zeros((len(customers), len(model.items)), bool)
        ti = items_index.get_indexer(sub["item"])
        rel[pd.Index(customers).get_indexer(sub["customer"])[ti >= 0], ti[ti >= 0]] = True
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
    rel_all, before_all = np.vstack(relevant), np.vstack(before)
    return {"Dangol hour-blind, per day-part": (np.vstack(blind), rel_all, before_all, float("nan")),
            "Dangol day-part menus, per day-part": (np.vstack(aware), rel_all, before_all, clock)}


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
