"""Segment-aware cold start: shares computed by hand, and on real Ta-Feng age groups."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dangol_cloud.recommend import (Recommender, RecommenderConfig, evaluate, load_purchases, load_segments,
                                    restrict_to_top_items, train)
from dangol_cloud.recommend.segments import SegmentTable, segment_values


def test_segment_shares_by_hand() -> None:
    # customers 0 and 1 are "age:<25", customer 2 "age:>65" and "area:115"; lines: c0 item 0 twice, c1 item 1,
    # c2 item 2 three times
    u, i = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 0, 1, 2, 2, 2])
    segments = segment_values(pd.DataFrame({"customer": ["a", "b", "c"], "age": ["<25", "<25", ">65"],
                                            "area": ["", None, "115"]}))
    assert segments == {"a": ["age:<25"], "b": ["age:<25"], "c": ["age:>65", "area:115"]}
    table = SegmentTable.build(u, i, np.array(["a", "b", "c"]), segments, 3)
    assert table.values == ["age:<25", "age:>65", "area:115"]
    base = np.array([0.5, 0.25, 0.25])
    # age <25: counts (2, 1, 0), k = 1 -> (c + k base) / (3 + 1) = (2.5, 1.25, 0.25) / 4
    assert table.shares(["age:<25"], base, 1.0) == pytest.approx([0.625, 0.3125, 0.0625])
    # two values: the mean of (0.5, .25, 3.25) / 4 for >65 and the same for area 115
    assert table.shares(["age:>65", "area:115", "unknown:x"], base, 1.0) == pytest.approx([0.125, 0.0625, 0.8125])
    assert table.shares(["unknown:x"], base, 1.0) is None


def test_segment_cold_start_on_ta_feng(tmp_path: Path) -> None:
    import os

    root = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    path = root / "purchases/ta-feng/ta_feng_transactions.csv"
    inter, items, _ = load_purchases(path, "ta-feng")
    segments = load_segments(path, "ta-feng")
    assert {"customer", "AGE_GROUP", "PIN_CODE"} <= set(segments.columns) and segments["customer"].is_unique
    customers = sorted(inter["customer"].unique())[::10]  # a tenth of the customers, whole histories
    sub, catalogue = restrict_to_top_items(inter[inter["customer"].isin(customers)], items, 80)
    cfg = RecommenderConfig(no_components=8, epochs=3, rerank=False, max_per_category=None)
    model = train(sub, catalogue, config=cfg, segments=segments)
    young, old = {"new-1": ["AGE_GROUP:<25"]}, {"new-1": ["AGE_GROUP:>65"]}
    a = model.recommend(["new-1"], n=10, segments=young)["new-1"]
    b = model.recommend(["new-1"], n=10, segments=old)["new-1"]
    plain = model.recommend(["new-1"], n=10)["new-1"]
    assert [p.item for p in a] != [p.item for p in b]
    assert a[0].reasons == ["popular with customers like you (<25)"]
    assert plain[0].reasons == ["popular with our customers"]
    loaded = Recommender.load(model.save(tmp_path))
    assert [p.item for p in loaded.recommend(["new-1"], n=10, segments=young)["new-1"]] == [p.item for p in a]
    # the evaluation's cold-start rows: customers whose first purchase is in February
    report = evaluate(sub, catalogue, cut=datetime(2001, 2, 1), top_items=80, config=replace(cfg, epochs=1),
                      baselines=False, segments=segments)
    pop = report.row("cold start: popularity, new customers")
    seg = report.row("cold start: segment-aware, new customers")
    assert pop["n_customers"] == seg["n_customers"] > 50
    assert 0 < pop["precision@10"] and 0 < seg["precision@10"]
