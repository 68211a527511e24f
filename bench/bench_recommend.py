#!/usr/bin/env python
"""Recommender benchmark (run by hand, not by pytest): offline evaluation table and timings.

    python bench/bench_recommend.py                       # Ta-Feng, cut 2001-02-01, 200 best sellers
    python bench/bench_recommend.py --top-items 0         # the full catalogue (1,919 subclasses)
    python bench/bench_recommend.py --format completejourney --path .../transactions.csv --cut 2017-11-01
    python bench/bench_recommend.py --cut 2001-01-04 --until 2001-02-01   # the validation split used for tuning

Prints the evaluation table (popularity, own-frequency, the published baselines GP-TopFreq, TIFU-KNN and
implicit ALS, LightFM alone, Dangol hybrid; day-part rows for data with times of day; cold-start rows for
the customers whose first purchase is after the cut, by segment; each row with its train and score seconds),
then trains the shipped model on everything before the cut and times (1) training and (2) scoring every
known customer (top-10 with reasons). Targets on Ta-Feng / 200 items: training <= 60 s, scoring every customer <= 5 s
on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from dangol_cloud.recommend import evaluate, load_purchases, load_segments, restrict_to_top_items, train
from rich.console import Console

DEFAULT_DATA = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=DEFAULT_DATA / "purchases/ta-feng/ta_feng_transactions.csv")
    ap.add_argument("--format", default="ta-feng", choices=["ta-feng", "completejourney", "csv"])
    ap.add_argument("--cut", type=datetime.fromisoformat, default=datetime(2001, 2, 1))
    ap.add_argument("--until", type=datetime.fromisoformat, default=None,
                    help="drop purchases from this time on (tune on a validation split, never on the test period)")
    ap.add_argument("--top-items", type=int, default=200, help="0 = the whole catalogue")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--no-baselines", action="store_true", help="skip GP-TopFreq, TIFU-KNN and ALS")
    ap.add_argument("--no-segments", action="store_true",
                    help="skip the cold-start rows (Ta-Feng AGE_GROUP/PIN_CODE, Complete Journey demographics)")
    args = ap.parse_args(argv)
    console = Console()
    if not args.path.is_file():
        console.print(f"[red]no data at {args.path}[/] (set DANGOL_DATA or pass --path)")
        return 2

    t0 = time.perf_counter()
    inter, items, errors = load_purchases(args.path, args.format)
    console.print(f"imported {len(inter):,} purchase lines ({errors} bad rows) in {time.perf_counter() - t0:.1f} s")
    if args.until is not None:
        inter = inter[inter["ts"] < args.until]
    top = args.top_items or None
    segments = None if args.no_segments or args.format == "csv" else load_segments(args.path, args.format)
    report = evaluate(inter, items, cut=args.cut, top_items=top, k=args.k, baselines=not args.no_baselines,
                      segments=segments)
    print(report.to_table())  # rendered at its own width

    before = inter[inter["ts"] < args.cut]
    if top:
        before, items = restrict_to_top_items(before, items, top)
    t0 = time.perf_counter()
    model = train(before, items)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    menus = model.recommend(list(model.customers), n=args.k)
    score_s = time.perf_counter() - t0
    console.print(f"model {model.version}: {len(model.customers):,} customers x {len(model.items):,} items")
    console.print(f"training: {train_s:.1f} s (target <= 60 s)")
    console.print(f"scoring every customer ({len(menus):,}, top-{args.k} with reasons): {score_s:.2f} s (target <= 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
