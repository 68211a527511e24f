#!/usr/bin/env python
"""How far can the shipped recommender get at all on a test period? The in-period ceiling (run by hand).

    python bench/bench_headroom.py                                  # Ta-Feng, test 2001-02-01 .. 2001-03-01
    python bench/bench_headroom.py --format completejourney --path .../transactions.csv \\
        --cut 2017-11-01 --until 2018-01-01 --top-items 100

A diagnostic, never a tuning step. The label window of the re-ranker and the second stage is set to the test
period itself (features from the purchases before ``--cut``, labels = bought in ``[cut, until)``), the
customers active on both sides are split at random into a fit part and a held-out part (``--holdout``), the
model is fitted on the fit part, and precision@k of its best blend weight on the held-out customers is compared
with basket frequency (GP-TopFreq: count of days with the item, ties by popularity; Li et al. 2023) on the same
customers. That is what this model family reaches when its training window is the test period (other customers
of it) — an optimistic ceiling (the blend is chosen on the held-out customers themselves).

Reading it: the shipped model, trained on the weeks before the cut, scores ``ratio × GP`` on the test period.
If the ceiling itself is near 1.0, no choice of training window closes the gap: the features carry no more
than that (the limit is the data and the features). If the ceiling is well above what the shipped model
reaches, the loss comes from the training window differing from the test period (a holiday in it, say).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dangol_cloud.recommend import RecommenderConfig, load_purchases, restrict_to_top_items
from dangol_cloud.recommend.data import clean_interactions, clean_items
from dangol_cloud.recommend.features import item_feature_matrix
# developer bench: the training internals, so the label window can be put on the test period
from dangol_cloud.recommend.fit import _label_window, _window_pairs, index_purchases
from dangol_cloud.recommend.rerank import Reranker
from dangol_cloud.recommend.stage2 import fit_stage2

DEFAULT_DATA = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def ceiling(inter: pd.DataFrame, items: pd.DataFrame, cut: datetime, until: datetime, top_items: int | None,
            seed: int, holdout: float, k: int = 10) -> dict:
    """One random customer split: ``{"held_out", "stage1", "best", "gp", "ratio"}`` (precision@k of stage 1
    alone, of the best blend and of GP-TopFreq on the held-out customers, and best / gp)."""
    df = clean_interactions(inter[inter["ts"] < pd.Timestamp(until)])
    catalogue = clean_items(items, df)
    if top_items:
        df, catalogue = restrict_to_top_items(df, catalogue, top_items, before=cut)
    customers, item_ids, u, i, day, categories = index_purchases(df, catalogue)
    shape = (len(customers), len(item_ids))
    start, end = (int(pd.Timestamp(t).to_datetime64().astype("datetime64[D]").astype(np.int64)) for t in (cut, until))
    sold = np.bincount(i[day < start], minlength=len(item_ids)) > 0  # items with a purchase before the cut
    cfg = replace(RecommenderConfig(), rerank_window_days=end - start, rerank_max_customers=10**9,
                  stage2_holdout=holdout, random_state=seed)
    item_x, _ = item_feature_matrix(catalogue, cfg.price_bands, identity=sold)
    rng = np.random.default_rng(seed)
    w = _label_window(u, i, day, shape, start, end, item_x, None, categories, cfg, None, rng)
    if w is None:
        raise SystemExit("too few customers on both sides of the cut")
    x, y, pw = _window_pairs(w, cfg, rng)
    reranker = Reranker.fit(x, y, pw, len(w.rows))
    stage2 = fit_stage2([w], reranker, cfg, k)
    blends = {b: p for b, p in (stage2.validation.items() if stage2 else []) if not b.startswith("ignored")}
    h, hold = w.history, w.hold
    relevant = w.labels[hold].toarray() > 0
    counts = h.visits_with_item[hold].toarray() + (h.item_lines / (h.item_lines.max() + 1.0) * 1e-3)[None, :]
    top = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    gp = float(np.take_along_axis(relevant, top, axis=1).sum(axis=1).mean() / k)
    best = max(blends.values()) if blends else float("nan")
    return {"held_out": len(hold), "stage1": blends.get("0", float("nan")), "best": best, "gp": gp,
            "ratio": best / gp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=DEFAULT_DATA / "purchases/ta-feng/ta_feng_transactions.csv")
    ap.add_argument("--format", default="ta-feng", choices=["ta-feng", "completejourney", "csv"])
    ap.add_argument("--cut", type=datetime.fromisoformat, default=datetime(2001, 2, 1))
    ap.add_argument("--until", type=datetime.fromisoformat, default=datetime(2001, 3, 1))
    ap.add_argument("--top-items", type=int, default=200, help="0 = the whole catalogue")
    ap.add_argument("--seeds", type=int, default=5, help="random customer splits")
    ap.add_argument("--holdout", type=float, default=0.4, help="share of the customers held out")
    args = ap.parse_args(argv)
    if not args.path.is_file():
        print(f"no data at {args.path} (set DANGOL_DATA or pass --path)", file=sys.stderr)
        return 2
    inter, items, _ = load_purchases(args.path, args.format)
    ratios = []
    print(f"in-period ceiling, {args.path.name}, test {args.cut:%Y-%m-%d} .. {args.until:%Y-%m-%d}, "
          f"{args.top_items or 'all'} items, precision@10 on held-out customers")
    for seed in range(args.seeds):
        r = ceiling(inter, items, args.cut, args.until, args.top_items or None, seed, args.holdout)
        ratios.append(r["ratio"])
        print(f"split {seed}: {r['held_out']} held out · stage 1 {r['stage1']:.4f} · best blend {r['best']:.4f} · "
              f"GP-TopFreq {r['gp']:.4f} · ratio {r['ratio']:.3f}", flush=True)
    print(f"ceiling / GP-TopFreq: mean {np.mean(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
