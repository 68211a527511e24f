"""The evaluation's day-part and cold-start rows leave out rows with nothing findable, as the main rows do.

A (customer, day-part) after the cut in which the customer bought only items first sold after the cut, or a new
customer who bought only such items, has no relevant item a list made before the cut could hold: recall 0/0 and
MAP divided by 0 (NaN), precision pulled down. Those rows are left out and counted in a note.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from dangol_cloud.recommend import evaluate

CUT = pd.Timestamp("2026-04-01")


def _history(n_customers: int = 40, n_items: int = 20, days: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic small history with hours (8, 12, 15, 19 h: one per day-part) and two stores."""
    rng = np.random.default_rng(7)
    rows = []
    for c in range(n_customers):
        fav = rng.choice(n_items, size=4, replace=False)
        for d in range(days):
            if rng.random() < 0.3:
                hour = int(rng.choice([8, 12, 15, 19]))
                for it in {int(rng.choice(fav)), int(rng.integers(n_items))}:
                    ts = pd.Timestamp("2026-01-01") + pd.Timedelta(days=d, hours=hour)
                    rows.append((f"c{c:03d}", f"i{it:02d}", ts, 1.0, "s1" if c % 2 else "s2"))
    inter = pd.DataFrame(rows, columns=["customer", "item", "ts", "quantity", "store"])
    items = pd.DataFrame({"item": [f"i{k:02d}" for k in range(n_items)],
                          "category": [f"cat{k % 4}" for k in range(n_items)], "price": [2.0 + k % 5 for k in range(n_items)], "tags": [[] for _ in range(n_items)],
                          "available": True})
    return inter, items


def _line(customer: str, item: str, day: int, hour: int) -> tuple:
    return customer, item, CUT + pd.Timedelta(days=day, hours=hour), 1.0, "s2"


def test_daypart_rows_leave_out_customer_dayparts_with_only_new_items() -> None:
    inter, items = _history()
    # c000's breakfast after the cut: only "NEW" (first sold after the cut); its other day-parts stay
    inter = inter[~((inter.customer == "c000") & (inter.ts >= CUT) & (inter.ts.dt.hour == 8))]
    inter = pd.concat([inter, pd.DataFrame([_line("c000", "NEW", 3, 7)], columns=inter.columns)], ignore_index=True)
    report = evaluate(inter, items, cut=CUT.to_pydatetime(), baselines=False)

    after = inter[inter.ts >= CUT]
    part = after.ts.dt.hour.map({7: "breakfast", 8: "breakfast", 12: "lunch", 15: "afternoon", 19: "evening"})
    pairs = after.assign(part=part, known=after.item != "NEW").groupby(["customer", "part"])["known"].any()
    assert not pairs[("c000", "breakfast")] and int((~pairs).sum()) == 1  # the one row with nothing findable
    for name in ("Dangol hour-blind, per day-part", "Dangol day-part menus, per day-part"):
        row = report.row(name)
        assert row["n_customers"] == int(pairs.sum())  # by hand: every (customer, day-part) but c000's breakfast
        assert np.isfinite(row["recall@10"]) and np.isfinite(row["MAP@10"])  # before the fix: NaN
    assert "1 (customer, day-part) row left out: only new items bought in it after the cut" in report.notes


def test_daypart_rows_without_left_out_rows_have_no_note() -> None:
    inter, items = _history()
    report = evaluate(inter, items, cut=CUT.to_pydatetime(), baselines=False)
    assert report.row("Dangol day-part menus, per day-part")["n_customers"] > 0
    assert not any("left out" in note for note in report.notes)


def test_cold_start_rows_leave_out_new_customers_with_only_new_items() -> None:
    inter, items = _history()
    new = pd.DataFrame([_line("z1", "NEW", 3, 7), _line("z2", "i01", 3, 7), _line("z2", "NEW", 4, 12)],
                       columns=inter.columns)
    segments = pd.DataFrame({"customer": [f"c{c:03d}" for c in range(40)] + ["z1", "z2"], "age_group": ["30s"] * 42})
    report = evaluate(pd.concat([inter, new], ignore_index=True), items, cut=CUT.to_pydatetime(), baselines=False,
                      segments=segments)
    for name in ("cold start: popularity, new customers", "cold start: segment-aware, new customers"):
        row = report.row(name)
        assert row["n_customers"] == 1  # z2 only: z1 bought nothing a list made before the cut could hold
        assert np.isfinite(row["recall@10"]) and np.isfinite(row["MAP@10"])  # before the fix: NaN
        # z2's one findable item is i01: recall is 1 if it is on the list, else 0; precision hits / 10
        assert row["recall@10"] in (0.0, 1.0) and row["precision@10"] == row["recall@10"] / 10
    assert "1 new customer left out of the cold-start rows: only new items bought after the cut" in report.notes


def test_cold_start_rows_absent_when_every_new_customer_bought_only_new_items() -> None:
    inter, items = _history()
    new = pd.DataFrame([_line("z1", "NEW", 3, 7)], columns=inter.columns)
    segments = pd.DataFrame({"customer": ["c000", "z1"], "age_group": ["30s", "30s"]})
    report = evaluate(pd.concat([inter, new], ignore_index=True), items, cut=datetime(2026, 4, 1), baselines=False,
                      segments=segments)
    assert not any(r["method"].startswith("cold start") for r in report.rows)
    assert "1 new customer left out of the cold-start rows: only new items bought after the cut" in report.notes
