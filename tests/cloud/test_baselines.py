"""Next-basket baselines (GP-TopFreq, TIFU-KNN, implicit ALS) and repeat/explore recall on tiny histories
whose expected values are computed by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from dangol_cloud.recommend.baselines import (
    Baskets,
    TifuKnn,
    als_scores,
    basket_counts,
    gp_top_freq,
    popularity_tie,
    top_k,
    tune_tifu_knn,
    validation_split,
)
from dangol_cloud.recommend.evaluate import paired_ratio_interval, repeat_explore_recall

A, B, C, D = range(4)


def baskets(lines: list[tuple[int, int, int]], n_customers: int, n_items: int = 4) -> Baskets:
    """``lines`` = (customer, item, day) purchase lines."""
    u, i, d = (np.array(x, dtype=np.int64) for x in zip(*lines, strict=True))
    return Baskets.build(u, i, d, (n_customers, n_items))


def test_gp_top_freq_counts_baskets_not_lines_and_fills_with_popularity() -> None:
    # customer 0: day 1 {A}, day 2 {A, B, B, B} -> basket counts A 2, B 1 (B has 3 lines but one basket)
    # customer 1: D on days 1, 2, 3 and C on day 1 -> global basket counts A 2, B 1, C 1, D 3
    lines = [(0, A, 1), (0, A, 2), (0, B, 2), (0, B, 2), (0, B, 2), (1, D, 1), (1, D, 2), (1, D, 3), (1, C, 1)]
    b = baskets(lines, 2)
    assert basket_counts(b).toarray().tolist() == [[2, 1, 0, 0], [0, 0, 1, 3]]
    tie = popularity_tie(np.asarray(basket_counts(b).sum(axis=0)).ravel())  # D 3 > A 2 > B 1 = C 1 (B first: index)
    assert tie.tolist() == [0.75, 0.5, 0.25, 1.0]
    # own items by basket count (A, B), then the rest by popularity (D, C)
    assert top_k(gp_top_freq(b, np.array([0])), 4, tie).tolist() == [[A, B, D, C]]
    assert top_k(gp_top_freq(b, np.array([1])), 4, tie).tolist() == [[D, C, A, B]]


def test_tifu_knn_vector_on_three_baskets() -> None:
    # customer 0 buys, oldest first: b1 = {A}, b2 = {A, B}, b3 = {C}. Group size m = 2 counted back from the newest:
    # newest group {b2, b3}, oldest group {b1} (the remainder); K = 2 groups; r_b = r_g = 0.5.
    # g_new = (0.5 * b2 + 1 * b3) / 2 = A 0.25, B 0.25, C 0.5;  g_old = b1 / 1 = A 1
    # u = (0.5 * g_old + 1 * g_new) / 2 = A (0.5 + 0.25) / 2 = 0.375, B 0.125, C 0.25
    lines = [(0, A, 1), (0, A, 2), (0, B, 2), (0, C, 3), (1, B, 1), (2, C, 5)]
    b = baskets(lines, 3)
    u = TifuKnn.customer_vectors(b, group_size=2, r_b=0.5, r_g=0.5).toarray()
    assert u[0] == pytest.approx([0.375, 0.125, 0.25, 0.0])
    # customers 1 and 2 have one basket each: u = that basket
    assert u[1] == pytest.approx([0, 1, 0, 0]) and u[2] == pytest.approx([0, 0, 1, 0])
    # squared distances from customer 0: to 1 = .375² + .875² + .25² = 0.96875, to 2 = .375² + .125² + .75² = 0.71875
    knn = TifuKnn.fit(b, 2, 0.5, 0.5, k_max=2)
    assert knn.neighbours[0].tolist() == [2, 1]
    assert knn.neighbours[1].tolist() == [0, 2]  # 1 -> 0: 0.96875, 1 -> 2: 2.0
    # alpha 0.5, k = 1: p = 0.5 u + 0.5 u_2 = A 0.1875, B 0.0625, C 0.625
    assert knn.scores(np.array([0]), 1, 0.5)[0] == pytest.approx([0.1875, 0.0625, 0.625, 0.0])
    # k = 2: neighbour mean (u_2 + u_1) / 2 = B 0.5, C 0.5 -> p = A 0.1875, B 0.3125, C 0.375
    assert knn.scores(np.array([0]), 2, 0.5)[0] == pytest.approx([0.1875, 0.3125, 0.375, 0.0])
    # only the query rows get neighbours
    partial = TifuKnn.fit(b, 2, 0.5, 0.5, k_max=1, rows=np.array([2]))
    assert partial.neighbours[:, 0].tolist() == [-1, -1, 0]  # 2 -> 0: 0.71875 < 2 -> 1: 2.0


def test_tifu_knn_decay_prefers_recent_baskets() -> None:
    # group size 1: every basket is a group, u = Σ r_g^(age in baskets) b / K. A bought long ago, B last.
    b = baskets([(0, A, 1), (0, A, 2), (0, B, 3)], 1)
    u = TifuKnn.customer_vectors(b, group_size=1, r_b=1.0, r_g=0.25).toarray()[0]
    assert u == pytest.approx([(0.25 ** 2 + 0.25) / 3, 1 / 3, 0, 0])  # A 0.104 < B 0.333 despite two baskets


def test_validation_split_and_tuning_stay_inside_the_training_data() -> None:
    # 30 customers: each buys A on days 0..9 and, in the last 5 days, B if even else C.
    lines = [(c, A, d) for c in range(30) for d in range(10)]
    lines += [(c, B if c % 2 == 0 else C, 12) for c in range(30)]
    b = baskets(lines, 30)
    u, i, d = (np.array(x) for x in zip(*lines, strict=True))
    split = validation_split(u, i, d, (30, 4), window_days=5)
    assert split is not None and split.start == 8
    assert split.past.day.max() == 7  # days 8.. are the labels
    assert split.labels.shape == (30, 4) and split.labels[:, A].sum() == 30  # A is bought on days 8, 9 too
    params, p, tried = tune_tifu_knn(split.past, split.rows, split.labels, 1, split.tie)
    assert p == pytest.approx(1.0)  # top-1 = A is always right
    assert len(tried) == 2 * 2 * 2 * 3 * 11
    assert basket_counts(b).sum() == 30 * 10 + 30


def test_als_scores_follow_co_purchases() -> None:
    # two groups of 20 customers: group 0 buys A and B, group 1 buys C and D; customer 40 bought only A
    rows, cols = [], []
    for c in range(40):
        for item in ((A, B) if c < 20 else (C, D)):
            rows.append(c)
            cols.append(item)
    rows.append(40)
    cols.append(A)
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(41, 4))
    scores = als_scores(counts, np.array([40]), factors=4, iterations=20)[0]
    assert scores[B] > max(scores[C], scores[D])


def test_repeat_and_explore_recall_by_hand() -> None:
    relevant = np.array([[1, 1, 1, 0], [0, 0, 1, 1]], bool)
    before = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    top = np.array([[0, 3], [2, -1]])
    rep, expl = repeat_explore_recall(top, relevant, before)
    # customer 0: repeat truth {0, 1}, hit {0} -> 1/2; explore truth {2}, no hit -> 0
    # customer 1: no repeat truth (not averaged); explore truth {2, 3}, hit {2} -> 1/2
    assert rep == pytest.approx(0.5)
    assert expl == pytest.approx((0 + 0.5) / 2)


def test_an_empty_slot_does_not_hide_item_0() -> None:
    """A list shorter than k (a small menu) is padded with -1: the padding must not unmark item 0 shown earlier."""
    relevant = np.array([[1, 1, 0]], bool)
    before = np.array([[1, 0, 0]], bool)
    rep, expl = repeat_explore_recall(np.array([[0, 1, -1, -1]]), relevant, before)
    assert (rep, expl) == (1.0, 1.0)


def test_paired_ratio_interval_by_hand() -> None:
    # 4 customers: the first method hits 1, 1, 0, 2 times, the second 1, 0, 0, 1 -> ratio 4 / 2
    ratio, low, high = paired_ratio_interval(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 1]))
    assert ratio == 2.0 and low <= ratio <= high and low >= 1.0  # never worse for any resampled customer set
    # the same lists: exactly 1 whatever the resample
    assert paired_ratio_interval(np.array([3, 0, 2]), np.array([3, 0, 2])) == (1.0, 1.0, 1.0)
    # one customer decides everything: a wide interval
    a, b = np.r_[np.full(99, 5), 50], np.r_[np.full(99, 5), 0]
    r, lo, hi = paired_ratio_interval(a, b)
    assert r == pytest.approx(545 / 495) and lo < r < hi and lo == pytest.approx(1.0)
    # repeatable, and the pairing is what counts: swapping the methods inverts the ratio
    assert paired_ratio_interval(a, b) == paired_ratio_interval(a, b)
    assert paired_ratio_interval(b, a)[0] == pytest.approx(1 / r)
    with pytest.raises(ValueError):
        paired_ratio_interval(np.array([1, 2]), np.array([0, 0]))
