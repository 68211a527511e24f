"""The second re-ranking stage on tiny hand-computable data: flat-array trees, stage-2 features (the whole
TIFU-KNN score, basket and line counts, stage-1 rank), the blend and the order below the candidates."""

from __future__ import annotations

import numpy as np
import pytest
from dangol_cloud.recommend.baselines import Baskets, TifuKnn
from dangol_cloud.recommend.history import build_history
from dangol_cloud.recommend.rerank import FEATURES
from dangol_cloud.recommend.scoring import STAGE2_FEATURES, Stage2, apply_stage2, candidates, stage2_features
from dangol_cloud.recommend.stage2 import blend_precision, choose_ignored_weight
from dangol_cloud.recommend.trees import Forest, fit_forest

A, B, C, D = range(4)
RANK = STAGE2_FEATURES.index("linear_rank")


def stump(feature: int, threshold: float, left: float, right: float, baseline: float = 0.0) -> Forest:
    """One tree: ``x[feature] <= threshold`` → ``left`` else ``right``."""
    return Forest(feature=np.array([feature, -1, -1], np.int32), threshold=np.array([threshold, 0.0, 0.0]),
                  left=np.array([1, -1, -1], np.int32), right=np.array([2, -1, -1], np.int32),
                  missing_left=np.array([True, False, False]), value=np.array([0.0, left, right]),
                  roots=np.array([0], np.int32), baseline=baseline)


def test_forest_arrays_follow_the_splits_and_missing_values() -> None:
    f = stump(1, 0.5, -2.0, 3.0, baseline=0.25)
    x = np.array([[9.0, 0.5], [9.0, 0.6], [9.0, np.nan]])
    assert f.raw(x).tolist() == [0.25 - 2.0, 0.25 + 3.0, 0.25 - 2.0]  # <= goes left; NaN goes left here
    again = Forest.from_arrays(f.to_arrays("s_"), "s_")
    assert again.raw(x).tolist() == f.raw(x).tolist()


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_forest_copied_from_lightgbm_scores_like_lightgbm(objective: str) -> None:
    import lightgbm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 + rng.normal(scale=0.5, size=2000)) > 0.5
    x[rng.random(2000) < 0.05, 2] = np.nan  # a feature with missing values: NaN follows LightGBM's default side
    group = np.full(100, 20) if objective == "lambdarank" else None
    params = {"objective": objective, "num_leaves": 7, "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y.astype(int), group=group), num_boost_round=20)
    test = rng.normal(size=(500, 3))
    test[::7, 2] = np.nan
    expected = booster.predict(test, raw_score=True)
    assert Forest.from_lightgbm(booster).raw(test) == pytest.approx(expected, abs=1e-9)
    ours = fit_forest(x, y, group_size=20, objective=objective, iterations=20, max_leaf_nodes=7, min_samples_leaf=20)
    assert ours.raw(test) == pytest.approx(expected, abs=1e-9)  # fit_forest is that booster, copied
    with pytest.raises(ValueError, match="both"):
        fit_forest(x, np.zeros(len(x), bool), group_size=20)
    with pytest.raises(ValueError, match="groups"):
        fit_forest(x, y, group_size=3, objective="lambdarank")


def test_lambdarank_forest_orders_within_each_customer() -> None:
    """Two features: f0 is constant within a group (a customer-level level) and predicts how many items the
    customer buys; f1 orders the items inside a group. A ranking objective must use f1, not f0."""
    rng = np.random.default_rng(1)
    groups, size = 300, 10
    level = np.repeat(rng.normal(size=groups), size)
    inside = rng.normal(size=groups * size)
    y = (inside + 2.0 * level + rng.normal(scale=0.3, size=groups * size)) > 1.0
    x = np.column_stack([level, inside])
    forest = fit_forest(x, y, group_size=size, objective="lambdarank", iterations=30, max_leaf_nodes=4,
                        min_samples_leaf=20)
    used = set(forest.feature[forest.feature >= 0].tolist())
    assert 1 in used
    probe = np.column_stack([np.zeros(5), np.linspace(-2, 2, 5)])
    assert np.all(np.diff(forest.raw(probe)) >= 0) and forest.raw(probe)[-1] > forest.raw(probe)[0]


def tiny_history():
    """Customer 0: day 1 {A}, day 2 {A, B}, day 3 {A, A, C} (A on 3 baskets, 4 lines); customer 1: day 2 {B, D}."""
    lines = [(0, A, 1), (0, A, 2), (0, B, 2), (0, A, 3), (0, A, 3), (0, C, 3), (1, B, 2), (1, D, 2)]
    u, i, d = (np.array(x, dtype=np.int64) for x in zip(*lines, strict=True))
    hist = build_history(u, i, d, (2, 4), ref_day=4, half_life=30.0)
    hist.tifu = TifuKnn.fit(Baskets.build(u, i, d, (2, 4)), group_size=2, r_b=0.5, r_g=0.5, k_max=1)
    return hist


def test_stage2_features_hold_the_tifu_score_counts_and_stage1_rank() -> None:
    hist = tiny_history()
    # TIFU-KNN (m = 2, r_b = r_g = 0.5) of customer 0, baskets b1 {A}, b2 {A, B}, b3 {A, C}:
    # newest group {b2, b3}: (0.5 b2 + b3) / 2 = A 0.75, B 0.25, C 0.5; oldest {b1}: A 1
    # u = (0.5 g_old + g_new) / 2 = A 0.625, B 0.125, C 0.25; its one neighbour is customer 1, u_1 = B 1, D 1
    u0 = [0.625, 0.125, 0.25, 0.0]
    assert hist.tifu.vectors[0].toarray()[0] == pytest.approx(u0)
    rows = np.array([0])
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])  # stage-1 logits: A, B, C, D
    z = np.zeros((1, 4))
    nn = hist.tifu.neighbour_mean(rows, 1)
    assert nn[0] == pytest.approx([0, 1, 0, 1])
    cand = candidates(scores, 3)
    assert cand.tolist() == [[A, B, C]]
    x = stage2_features(hist, np.zeros(4), np.zeros(4), scores, z, nn, rows, cand, tifu_alpha=0.4)
    assert x.shape == (3, len(STAGE2_FEATURES)) and len(STAGE2_FEATURES) == len(FEATURES) + 5
    col = {name: x[:, k] for k, name in enumerate(STAGE2_FEATURES)}
    assert col["linear_logit"].tolist() == [4.0, 3.0, 2.0]
    assert col["linear_rank"].tolist() == [0.0, 1.0, 2.0]
    # α u + (1 - α) neighbours with α 0.4: A 0.25, B 0.05 + 0.6, C 0.1
    assert col["tifu_score"] == pytest.approx([0.25, 0.65, 0.1])
    assert col["log_visits_with_item"] == pytest.approx(np.log1p([3, 1, 1]))  # baskets, not lines
    assert col["log_lines"] == pytest.approx(np.log1p([4, 1, 1]))  # purchase lines
    # the customer's last visit was day 3, one day before the reference day: 0.5 ** (1 / 30)
    assert col["customer_recency"] == pytest.approx([0.5 ** (1 / 30)] * 3)


def test_blend_reorders_the_candidates_and_keeps_the_rest_below_in_stage1_order() -> None:
    hist = tiny_history()
    rows = np.array([0])
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    # forest: stage-1 rank 0 -> 0, ranks 1, 2 -> 10; λ = 0.5 over M = 3 candidates A, B, C:
    # A 0.5·4 + 0.5·0 = 2, B 0.5·3 + 5 = 6.5, C 0.5·2 + 5 = 6; D (not a candidate) goes below the lowest candidate
    # keeping its stage-1 gap: min candidate 2 - 1 - (best non-candidate 1) + 1 = 1
    stage2 = Stage2(stump(RANK, 0.5, 0.0, 10.0), blend=0.5, candidates=3, tifu_alpha=0.4, validation={})
    out = apply_stage2(stage2, hist, np.zeros(4), np.zeros(4), scores, np.zeros((1, 4)), None, rows)
    assert out[0].tolist() == pytest.approx([2.0, 6.5, 6.0, 1.0])
    assert scores[0].tolist() == [4.0, 3.0, 2.0, 1.0]  # input untouched
    # λ = 0: stage 1 alone
    off = Stage2(stage2.forest, 0.0, 3, 0.4, {})
    assert apply_stage2(off, hist, np.zeros(4), np.zeros(4), scores, np.zeros((1, 4)), None, rows) is scores


def test_blend_precision_counts_hits_of_the_blended_top_k() -> None:
    linear = np.array([[3.0, 2.0, 1.0]])
    forest = np.array([[0.0, 0.0, 9.0]])
    relevant = np.array([[False, False, True]])
    assert blend_precision(linear, forest, relevant, 0.0, 1) == 0.0  # top-1 by linear: item 0
    assert blend_precision(linear, forest, relevant, 0.5, 1) == 1.0  # 1.5, 1.0, 5.0: item 2
    assert blend_precision(linear, forest, relevant, 0.5, 2) == 0.5


def test_soft_negative_weight_is_chosen_only_where_it_helps() -> None:
    blended = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    ignored = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # customer 0 ignored item 0 when it was shown
    # customer 0 then buys item 1, customer 1 item 0. Top-1 per β: β 0 / 0.5: 0 and 0 -> 1 hit of 2;
    # β 1: customer 0 has 2, 2, 1 (a tie, the first wins) -> 0.5; β 2: 1, 2, 1 -> item 1, a hit -> 1.0
    relevant = np.array([[False, True, False], [True, False, False]])
    weight, tried = choose_ignored_weight(blended, ignored, relevant, (0.0, 0.5, 1.0, 2.0), 1)
    assert tried == {0.0: 0.5, 0.5: 0.5, 1.0: 0.5, 2.0: 1.0} and weight == 2.0
    # the ignored item was bought after all: no penalty helps, β stays 0
    bought_anyway = np.array([[True, False, False], [True, False, False]])
    assert choose_ignored_weight(blended, ignored, bought_anyway, (0.0, 0.5, 1.0, 2.0), 1)[0] == 0.0


def test_soft_negative_penalty_is_subtracted_from_every_score() -> None:
    import scipy.sparse as sp

    hist = tiny_history()
    hist.ignored = sp.csr_matrix(np.array([[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32))
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    stage2 = Stage2(stump(RANK, 0.5, 0.0, 10.0), blend=0.5, candidates=3, tifu_alpha=0.4, validation={},
                    ignored_weight=2.0)
    out = apply_stage2(stage2, hist, np.zeros(4), np.zeros(4), scores, np.zeros((1, 4)), None, np.array([0]))
    assert out[0].tolist() == pytest.approx([2.0, 6.5, 6.0, 1.0 - 2.0 * 0.5])  # as above, D loses β · 0.5
    stage1_only = Stage2(stage2.forest, 0.0, 3, 0.4, {}, ignored_weight=2.0)
    out = apply_stage2(stage1_only, hist, np.zeros(4), np.zeros(4), scores, np.zeros((1, 4)), None, np.array([0]))
    assert out[0].tolist() == pytest.approx([4.0, 3.0, 2.0, 0.0])
