"""The recommender on real purchase data (Ta-Feng, Complete Journey), with real LightFM training."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dangol_cloud.recommend import (
    Recommender,
    RecommenderConfig,
    evaluate,
    load_purchases,
    ranking_metrics,
    restrict_to_top_items,
    train,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = RecommenderConfig(no_components=16, epochs=10, max_per_category=2, rerank_max_customers=1000)


def data_dir() -> Path:
    """The real data sets: $DANGOL_DATA or <repo>/../shared/data; fails (not skips) when absent."""
    root = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (root / "purchases").is_dir():
        pytest.fail(f"real purchase data not found at {root / 'purchases'} (set DANGOL_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="module")
def ta_feng() -> tuple[pd.DataFrame, pd.DataFrame]:
    inter, items, errors = load_purchases(data_dir() / "purchases/ta-feng/ta_feng_transactions.csv", "ta-feng")
    assert errors == 0
    return inter, items


@pytest.fixture(scope="module")
def small(ta_feng):
    """1,200 Ta-Feng customers with >= 2 shopping days, the 120 best sellers, two new items, one sold out.

    NEW-X is in the best-selling category, NEW-Y in the least-selling one, both priced like NEW-X's peers;
    nobody has bought either.
    """
    inter, items = ta_feng
    days = inter.groupby("customer")["ts"].nunique()
    keep = set(sorted(days[days >= 2].index)[:1200])
    sub, catalogue = restrict_to_top_items(inter[inter["customer"].isin(keep)], items, 120)
    with_cat = sub.merge(catalogue[["item", "category"]], on="item")
    cat_counts = with_cat["category"].value_counts()
    x, y = cat_counts.index[0], cat_counts.index[-1]
    price = catalogue.loc[catalogue["category"] == x, "price"].median()
    new = pd.DataFrame({"item": ["NEW-X", "NEW-Y"], "category": [x, y], "price": [price, price],
                        "tags": [[], []], "available": [True, True]})
    catalogue = pd.concat([catalogue, new], ignore_index=True)
    sold_out = sub["item"].value_counts().index[0]
    catalogue.loc[catalogue["item"] == sold_out, "available"] = False
    model = train(sub, catalogue, config=SMALL)
    return {"model": model, "interactions": sub, "items": catalogue, "x": x, "y": y, "sold_out": sold_out,
            "with_cat": with_cat}


def test_ranking_metrics_hand_computed() -> None:
    relevant = np.zeros((2, 5), bool)
    relevant[0, [1, 3]] = True
    relevant[1, [1, 3]] = True
    top = np.array([[0, 1, 2], [3, 1, -1]])
    p, r, m = ranking_metrics(top, relevant, 3)
    # row 0: one hit at rank 2 -> P 1/3, R 1/2, AP (1/2)/2; row 1: hits at 1, 2 -> P 2/3, R 1, AP (1 + 1)/2
    assert p == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert r == pytest.approx((1 / 2 + 1) / 2)
    assert m == pytest.approx((0.25 + 1.0) / 2)


def test_unavailable_items_never_appear(small) -> None:
    model, inter = small["model"], small["interactions"]
    customers = [*sorted(inter["customer"].unique())[:300], "no-such-customer"]
    picks = model.recommend(customers, n=10)  # default: the items frame's availability flags
    assert all(p.item != small["sold_out"] for lst in picks.values() for p in lst)
    popular = list(inter["item"].value_counts().index[:40])
    available = set(model.items) - set(popular)
    picks = model.recommend(customers, n=10, available=available)
    assert set(picks) == set(customers)
    for lst in picks.values():
        assert len(lst) == 10
        assert {p.item for p in lst} <= available
        assert len({p.item for p in lst}) == 10


def expected_caps(model: Recommender, n: int) -> pd.Series:
    """Cap per category: max(max_per_category, ceil(category_share_factor * n * share of the available items))."""
    available = [c for c, a in zip(model.categories, model.available, strict=True) if a]
    share = pd.Series(available).value_counts() / len(available)
    caps = np.ceil(SMALL.category_share_factor * n * share - 1e-9).clip(lower=SMALL.max_per_category)
    return caps.astype(int)


def test_category_cap_is_respected_and_binds(small) -> None:
    model, inter = small["model"], small["interactions"]
    categories = dict(zip(model.items, model.categories, strict=True))
    customers = sorted(inter["customer"].unique())[:400]
    cap = expected_caps(model, 10)

    def excess(m: Recommender) -> int:
        picks = m.recommend(customers, n=10, explain=False)
        worst = 0
        for lst in picks.values():
            counts = pd.Series([categories[p.item] for p in lst]).value_counts()
            worst = max(worst, int((counts - cap.reindex(counts.index)).max()))
        return worst

    assert excess(model) <= 0
    model.config = replace(model.config, max_per_category=None)
    try:
        assert excess(model) > 0, "without the cap some list exceeds it"
    finally:
        model.config = SMALL


def test_cold_start_gives_the_most_sold_available_items(small) -> None:
    model, inter = small["model"], small["interactions"]
    model.config = replace(model.config, max_per_category=None)
    try:
        lst = model.recommend(["somebody-new"], n=10)["somebody-new"]
    finally:
        model.config = SMALL
    counts = inter["item"].value_counts()
    counts = counts.drop(small["sold_out"])
    assert sorted(counts[[p.item for p in lst]], reverse=True) == list(counts.iloc[:10])
    assert all(p.reasons == ["popular with our customers"] for p in lst)
    assert [p.score for p in lst] == sorted((p.score for p in lst), reverse=True)
    categories = dict(zip(model.items, model.categories, strict=True))
    capped = model.cold_start(10)
    counts = pd.Series([categories[p.item] for p in capped]).value_counts()
    assert len(capped) == 10 and (counts <= expected_caps(model, 10).reindex(counts.index)).all()


def test_cold_start_follows_store_and_time_of_day_on_complete_journey() -> None:
    path = data_dir() / "purchases/completejourney/transactions.csv"
    inter, items, _ = load_purchases(path, "completejourney")
    households = sorted(inter["customer"].unique())[:120]
    sub, catalogue = restrict_to_top_items(inter[inter["customer"].isin(households)], items, 80)
    model = train(sub, catalogue, config=replace(SMALL, epochs=3, max_per_category=None))
    hours = sub["ts"].dt.hour

    def window_counts(h: int) -> pd.Series:
        return sub.loc[hours.isin([(h - 1) % 24, h, (h + 1) % 24]), "item"].value_counts()

    morning = model.cold_start(10, hour=8)
    evening = model.cold_start(10, hour=20)
    assert all("time of day" in p.reasons[0] for p in morning)
    c8, c20 = window_counts(8), window_counts(20)
    assert c8.reindex([p.item for p in morning]).fillna(0).sum() >= c8.reindex([p.item for p in evening]).fillna(0).sum()
    assert c20.reindex([p.item for p in evening]).fillna(0).sum() >= c20.reindex([p.item for p in morning]).fillna(0).sum()
    store = sub["store"].value_counts().index[0]
    at_store = model.cold_start(5, store=store)
    assert all(p.reasons == ["popular at this store"] for p in at_store)
    store_counts = sub.loc[sub["store"] == store, "item"].value_counts()
    assert store_counts.reindex([p.item for p in at_store]).fillna(0).sum() >= store_counts.iloc[:5].sum() * 0.9


def test_save_load_round_trip_gives_identical_picks(small, tmp_path: Path) -> None:
    model = small["model"]
    customers = [*model.customers[:200], "stranger"]
    folder = model.save(tmp_path)
    assert folder.name == model.version and (folder / "meta.json").is_file()
    loaded = Recommender.load(folder)
    assert loaded.version == model.version and loaded.config == model.config
    available = set(model.items[::2]) | {"NEW-X"}
    for kwargs in ({}, {"available": available}):
        assert loaded.recommend(customers, n=10, **kwargs) == model.recommend(customers, n=10, **kwargs)
    with pytest.raises(FileExistsError):
        model.save(tmp_path)


def test_new_item_is_recommended_through_its_features(small) -> None:
    model, with_cat, x = small["model"], small["with_cat"], small["x"]
    share = (with_cat["category"] == x).groupby(with_cat["customer"]).mean()
    lovers = list(share.sort_values(ascending=False, kind="stable").index[:50])
    rows = pd.Index(model.customers).get_indexer(lovers)
    items = list(model.items)
    z = model.factors.zscores(rows)
    assert z[:, items.index("NEW-X")].mean() > z[:, items.index("NEW-Y")].mean() + 0.5
    # the owner takes the old items of category x off the menu: the new one takes their place
    available = {i for i, c in zip(model.items, model.categories, strict=True) if c != x} | {"NEW-X", "NEW-Y"}
    picks = model.recommend(lovers, n=10, available=available)
    got_x = [lst for lst in picks.values() if any(p.item == "NEW-X" for p in lst)]
    got_y = [lst for lst in picks.values() if any(p.item == "NEW-Y" for p in lst)]
    assert len(got_x) > len(got_y)
    assert len(got_x) >= 5
    reasons = next(p.reasons for p in got_x[0] if p.item == "NEW-X")
    assert reasons[0] == "new on the menu"


def test_reasons_name_the_repeat_purchase(small) -> None:
    model, inter = small["model"], small["interactions"]
    visits = inter.assign(day=inter["ts"].dt.normalize())
    per_item = visits.groupby(["customer", "item"])["day"].nunique()
    total = visits.groupby("customer")["day"].nunique()
    regular = per_item.idxmax()[0]  # the customer with the most visits for one item
    picks = model.recommend([regular], n=10)[regular]
    pattern = re.compile(r"you often buy this \((\d+) of your (\d+) visits\)")
    found = 0
    for p in picks:
        for reason in p.reasons:
            if m := pattern.fullmatch(reason):
                assert int(m[1]) == per_item[(regular, p.item)] and int(m[2]) == total[regular]
                found += 1
    assert found >= 1
    assert picks[0].item in set(per_item[regular].index)


def test_version_and_score_order(small) -> None:
    model = small["model"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", model.version)
    for lst in model.recommend(list(model.customers[:100]), n=10, explain=False).values():
        scores = [p.score for p in lst if not p.item.startswith("NEW-")]
        assert scores == sorted(scores, reverse=True)


def test_train_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="quantity"):
        train(pd.DataFrame({"customer": ["a"], "item": ["b"], "ts": [datetime(2024, 1, 1)]}))
    with pytest.raises(ValueError, match="no interactions"):
        train(pd.DataFrame({"customer": ["a"], "item": ["b"], "ts": [datetime(2024, 1, 1)], "quantity": [0.0]}))


def test_customer_features_are_used(ta_feng) -> None:
    raw = pd.read_csv(data_dir() / "purchases/ta-feng/ta_feng_transactions.csv", dtype=str, keep_default_na=False,
                      usecols=["CUSTOMER_ID", "AGE_GROUP", "PIN_CODE"], nrows=20000)
    inter, items = ta_feng
    sub = inter[inter["customer"].isin(set(raw["CUSTOMER_ID"]))]
    sub, catalogue = restrict_to_top_items(sub, items, 60)
    features = raw.drop_duplicates("CUSTOMER_ID").rename(columns={"CUSTOMER_ID": "customer"})
    cfg = replace(SMALL, epochs=3, rerank=False)
    with_features = train(sub, catalogue, config=cfg, customer_features=features)
    without = train(sub, catalogue, config=cfg)
    customers = list(with_features.customers[:50])
    assert len(with_features.recommend(customers, n=5)) == 50
    # shared features (age group, area) tie customers together: their representations differ from identity-only ones
    assert not np.allclose(with_features.factors.user_emb, without.factors.user_emb)


def _bucket(customer: str) -> int:
    return int(hashlib.sha1(customer.encode()).hexdigest(), 16) % 2


@pytest.mark.slow
def test_hybrid_beats_own_frequency_on_held_out_month(ta_feng) -> None:
    """Half of the Ta-Feng customers, trained on Nov-Jan, tested on February, 200 best sellers, shipped config."""
    inter, items = ta_feng
    half = inter[inter["customer"].map(_bucket) == 0]
    report = evaluate(half, items, cut=datetime(2001, 2, 1), top_items=200)
    own, ours = report.row("own-frequency"), report.row("Dangol (hybrid)")
    assert ours["n_customers"] > 2000
    assert ours["precision@10"] > own["precision@10"]
    assert ours["recall@10"] > own["recall@10"]
    assert report.row("popularity")["precision@10"] < own["precision@10"]
    assert 0 < report.row("LightFM alone")["precision@10"] < ours["precision@10"]
    assert "Dangol (hybrid)" in report.to_markdown() and "precision@10" in report.to_table()


def test_label_windows_step_back_and_pool_into_one_second_stage(small) -> None:
    """``rerank_windows`` label windows, each ``rerank_window_stride_days`` before the next; the re-ranker and the
    forest are fitted on their pooled pairs and the blend chosen on their pooled held-out customers."""
    from dangol_cloud.recommend.fit import label_window_starts

    cfg = RecommenderConfig(rerank_window_days=28, rerank_windows=3, rerank_window_stride_days=14)
    assert label_window_starts(100, cfg) == [72, 58, 44]
    assert label_window_starts(100, RecommenderConfig()) == [72]
    one = small["model"]
    two = train(small["interactions"], small["items"], config=replace(SMALL, rerank_windows=2))
    assert two.reranker.n_customers > one.reranker.n_customers  # the earlier window's customers were added
    assert two.stage2 is not None and set(two.stage2.validation) >= {"0", "1"}
    picks = two.recommend(list(two.customers[:50]), n=10)
    assert all(len(p) == 10 for p in picks.values())


def test_the_evaluation_catalogue_knows_nothing_of_the_test_period(ta_feng) -> None:
    """No catalogue says when an item arrived: the evaluation's menu is the items sold before the cut, priced from
    their lines before it (the test month's items and prices would leak into the features and the new-item slot)."""
    inter, items = ta_feng
    cut = datetime(2001, 2, 1)
    customers = sorted(inter.loc[inter["ts"] < cut, "customer"].unique())[:800]
    sample = inter[inter["customer"].isin(customers)]
    before = sample[sample["ts"] < cut]
    assert set(sample["item"]) - set(before["item"]), "the sample must hold items first sold after the cut"
    from dangol_cloud.recommend.data import catalogue_before

    catalogue = catalogue_before(sample, items, cut)
    assert set(catalogue["item"]) == set(before["item"])
    changed = [i for i in catalogue["item"] if before.loc[before["item"] == i, "unit"].median()
               != sample.loc[sample["item"] == i, "unit"].median()][:3]
    assert changed, "some item's price differs with the test month included"
    for i in changed:
        assert catalogue.set_index("item").loc[i, "price"] == before.loc[before["item"] == i, "unit"].median()
    report = evaluate(sample, items, cut=cut, config=SMALL, baselines=False)
    assert report.n_items == before["item"].nunique()
    # a customer who bought only items new after the cut has nothing the menu could find: left out, not a NaN recall
    assert all(np.isfinite(row[f"{m}@10"]) for row in report.rows for m in ("precision", "recall", "MAP"))


def test_training_twice_on_the_same_data_gives_the_same_menus(small) -> None:
    """A regular's menu must not reshuffle because the owner retrained on unchanged data (LightFM's parallel
    "Hogwild" SGD makes each multi-threaded fit differ), and an evaluation must be repeatable."""
    a = train(small["interactions"], small["items"], config=SMALL)
    b = train(small["interactions"], small["items"], config=SMALL)
    customers = sorted(small["interactions"]["customer"].unique())[:300]
    picks_a, picks_b = a.recommend(customers, n=10, explain=False), b.recommend(customers, n=10, explain=False)
    assert {c: [p.item for p in picks_a[c]] for c in customers} == {c: [p.item for p in picks_b[c]] for c in customers}
