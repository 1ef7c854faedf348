"""Bootstrap intervals, paired differences and McNemar's test: hand-computed cases and coverage."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from dfew_mm.metrics import classification_metrics
from dfew_mm.stats import format_interval, mcnemar, metric_intervals, paired_difference, proportion_interval


def _index_bootstrap_uar(y_true, y_pred, n_boot, seed):
    """Reference: the textbook stratified bootstrap (clips drawn with replacement within each class,
    explicit index matrices), one class at a time."""
    rng = np.random.default_rng(seed)
    right = y_true == y_pred
    recalls = []
    for c in np.unique(y_true):
        members = np.flatnonzero(y_true == c)
        idx = members[rng.integers(0, members.size, size=(n_boot, members.size))]  # (B, n_c)
        recalls.append(right[idx].mean(axis=1))
    return np.mean(recalls, axis=0)  # (B,)


def test_values_match_classification_metrics():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 2, 2, 0, 0]
    m = metric_intervals(y_true, y_pred, n_boot=500)
    ref = classification_metrics(y_true, y_pred)
    assert m["uar"]["value"] == pytest.approx(ref["uar"]) and m["war"]["value"] == pytest.approx(ref["war"])
    for name in ("uar", "war"):
        assert m[name]["low"] <= m[name]["value"] <= m[name]["high"]
    assert m["n_boot"] == 500 and m["level"] == 0.95 and "stratified" in m["method"]


def test_hand_computed_intervals():
    # one class: the resampled recall is Beta(k + 1/2, n - k + 1/2), so the interval is the Jeffreys one
    m = metric_intervals([0, 0, 0, 0], [0, 0, 1, 1], n_boot=4000)
    assert m["uar"]["value"] == 0.5
    assert m["uar"]["low"] == pytest.approx(0.1228, abs=0.02) and m["uar"]["high"] == pytest.approx(0.8772, abs=0.02)
    # all 5 clips right: still uncertain (Beta(5.5, 0.5): 2.5% quantile 0.62), and the upper bound is 1
    m = metric_intervals([3] * 5, [3] * 5, n_boot=4000)["uar"]
    assert m["value"] == m["high"] == 1.0 and m["low"] == pytest.approx(0.6206, abs=0.02)
    # two classes: UAR = mean recall, WAR = recall weighted by the (fixed) class counts
    m = metric_intervals([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1], n_boot=4000)
    assert m["uar"]["value"] == pytest.approx(0.75) and m["war"]["value"] == pytest.approx(4 / 6)
    assert 0.3 < m["uar"]["low"] < 0.6 and m["uar"]["high"] > 0.9


def test_agrees_with_the_textbook_bootstrap_on_large_classes():
    rng = np.random.default_rng(1)
    y_true = np.repeat(np.arange(7), [90, 60, 80, 50, 50, 30, 40])
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, (y_true + 1) % 7)
    reference = np.quantile(_index_bootstrap_uar(y_true, y_pred, 4000, seed=2), [0.025, 0.975])
    m = metric_intervals(y_true, y_pred, n_boot=4000, seed=3)
    assert m["uar"]["low"] == pytest.approx(reference[0], abs=0.015)
    assert m["uar"]["high"] == pytest.approx(reference[1], abs=0.015)


def _simulate(counts, recall, sims, interval):
    """Share of `sims` simulated test sets (known per-class recall) whose interval holds the true UAR."""
    y_true = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(7)
    hits = 0
    for sim in range(sims):
        right = rng.random(y_true.size) < recall[y_true]
        low, high = interval(y_true, np.where(right, y_true, (y_true + 1) % 7), sim)
        hits += low <= recall.mean() <= high
    return hits / sims


def test_coverage_by_simulation():
    """200 simulated test sets from a classifier with known per-class recall: the 95% interval should
    hold the true UAR (and the true WAR for these class counts) in about 95% of them."""
    counts = np.array([40, 25, 35, 20, 20, 8, 12])  # a low-light bin: a few hundred clips, rare classes
    recall = np.array([0.8, 0.5, 0.6, 0.4, 0.7, 0.2, 0.3])
    y_true = np.repeat(np.arange(7), counts)
    true_uar, true_war = recall.mean(), (counts * recall).sum() / counts.sum()
    rng = np.random.default_rng(7)
    covered = np.zeros(2)
    for sim in range(200):
        right = rng.random(y_true.size) < recall[y_true]
        m = metric_intervals(y_true, np.where(right, y_true, (y_true + 1) % 7), n_boot=1000, seed=sim)
        covered += [m["uar"]["low"] <= true_uar <= m["uar"]["high"], m["war"]["low"] <= true_war <= m["war"]["high"]]
    coverage = covered / 200
    assert 0.90 <= coverage[0] <= 0.99 and 0.90 <= coverage[1] <= 0.99, coverage


def test_small_sets_keep_their_coverage_where_the_textbook_bootstrap_fails():
    """12 clips over 7 classes (the demo's test fold): the textbook bootstrap gives single-clip and
    all-right classes no spread and misses the true UAR far more often than 5%."""
    counts, recall = np.array([2, 2, 2, 2, 2, 1, 1]), np.array([0.8, 0.5, 0.6, 0.4, 0.7, 0.2, 0.3])

    def ours(y_true, y_pred, seed):
        m = metric_intervals(y_true, y_pred, n_boot=1000, seed=seed)["uar"]
        return m["low"], m["high"]

    def textbook(y_true, y_pred, seed):
        return np.quantile(_index_bootstrap_uar(y_true, y_pred, 1000, seed), [0.025, 0.975])

    assert _simulate(counts, recall, 200, ours) >= 0.9
    assert _simulate(counts, recall, 200, textbook) <= 0.8


def test_identical_systems_paired_interval_holds_zero_and_mcnemar_is_one():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 100)
    pred = np.where(rng.random(100) < 0.5, y_true, rng.integers(0, 7, 100))
    for metric in ("uar", "war"):
        d = paired_difference(y_true, pred, pred.copy(), metric=metric)
        assert d["diff"] == 0 and d["low"] <= 0 <= d["high"] and d["p"] == 1.0
        assert d["high"] - d["low"] > 0  # 100 agreeing clips do not prove that the two never differ
    assert mcnemar(pred == y_true, pred == y_true) == {"a_only": 0, "b_only": 0, "p": 1.0}


def test_one_fixed_clip_of_two_is_no_evidence():
    # two clips of different classes, a fixes one of them: the textbook bootstrap would resample the
    # same two clips every time and report +50 [+50, +50]
    d = paired_difference([0, 1], [0, 1], [2, 1])
    assert d["diff"] == pytest.approx(0.5) and d["low"] < 0 < d["high"] and d["p"] > 0.05
    assert mcnemar([1, 1], [0, 1])["p"] == 1.0


def test_one_system_right_where_the_other_is_wrong():
    y_true = np.repeat(np.arange(4), 10)  # 40 clips, 4 classes
    wrong_b = np.tile(np.arange(10) < 3, 4)  # b misses 3 clips of every class
    pred_b = np.where(wrong_b, (y_true + 1) % 4, y_true)
    # a is right on every clip b gets wrong (and on the rest)
    d = paired_difference(y_true, y_true, pred_b)
    assert d["diff"] == pytest.approx(0.3) and d["low"] > 0 and d["p"] < 0.01
    m = mcnemar(np.ones(40, bool), pred_b == y_true)
    assert (m["a_only"], m["b_only"]) == (12, 0) and m["p"] == pytest.approx(2 * 0.5 ** 12)
    # a is right exactly where b is wrong: a 30% right, b 70% right
    pred_a = np.where(wrong_b, y_true, (y_true + 2) % 4)
    d = paired_difference(y_true, pred_a, pred_b)
    assert d["diff"] == pytest.approx(-0.4) and d["high"] < 0
    assert mcnemar(pred_a == y_true, pred_b == y_true)["p"] < 0.05
    # reversed order flips the sign
    assert paired_difference(y_true, pred_b, pred_a)["low"] > 0


def test_balanced_disagreement_is_not_a_difference():
    y_true = np.zeros(20, int)
    a = np.r_[np.zeros(10), np.ones(10)].astype(int)  # right on the first half
    b = 1 - a  # right on the second half
    d = paired_difference(y_true, a, b, metric="war")
    assert d["diff"] == 0 and d["low"] < 0 < d["high"] and d["p"] > 0.5
    assert mcnemar(a == 0, b == 0) == {"a_only": 10, "b_only": 10, "p": 1.0}


def test_mcnemar_hand_computed():
    # 3 vs 1 discordant clips: P(X <= 1) + P(X >= 3) for Binomial(4, 1/2) = 10/16
    assert mcnemar([1, 1, 1, 0, 0], [0, 0, 0, 1, 0]) == {"a_only": 3, "b_only": 1, "p": pytest.approx(0.625)}
    with pytest.raises(ValueError, match="clips"):
        mcnemar([1, 0], [1])


def test_paired_war_hand_computed():
    y_true = [0, 0, 1, 1, 2]
    a = [0, 0, 1, 0, 0]  # right on 3
    b = [0, 1, 0, 0, 2]  # right on 2
    d = paired_difference(y_true, a, b, metric="war", n_boot=200)
    assert d["diff"] == pytest.approx((3 - 2) / 5)
    # UAR: recalls a (1, 1/2, 0), b (1/2, 0, 1)
    assert paired_difference(y_true, a, b)["diff"] == pytest.approx((1.5 - 1.5) / 3)


def test_seeded_fast_and_validated():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 5000)
    pred_a = np.where(rng.random(5000) < 0.6, y_true, rng.integers(0, 7, 5000))
    pred_b = np.where(rng.random(5000) < 0.6, y_true, rng.integers(0, 7, 5000))
    tic = time.perf_counter()
    first = metric_intervals(y_true, pred_a)
    paired = paired_difference(y_true, pred_a, pred_b)
    assert time.perf_counter() - tic < 0.5  # 2,000 resamples of 5,000 clips, twice
    assert metric_intervals(y_true, pred_a) == first
    assert paired_difference(y_true, pred_a, pred_b) == paired
    assert metric_intervals(y_true, pred_a, seed=1)["uar"]["low"] != first["uar"]["low"]
    narrow = metric_intervals(y_true, pred_a, level=0.5)["uar"]
    assert first["uar"]["low"] < narrow["low"] < narrow["high"] < first["uar"]["high"]

    empty = metric_intervals([], [])
    assert math.isnan(empty["uar"]["value"]) and math.isnan(empty["war"]["high"])
    assert math.isnan(paired_difference([], [], [])["diff"])
    with pytest.raises(ValueError, match="predictions"):
        metric_intervals([0, 1], [0])
    with pytest.raises(ValueError, match="metric"):
        paired_difference([0], [0], [0], metric="f1")
    with pytest.raises(ValueError, match="level"):
        metric_intervals([0], [0], level=95)


def test_format_interval():
    assert format_interval(0.5834, 0.412, 0.7) == "58.3 [41.2, 70.0]"
    assert format_interval(float("nan"), 0, 1) == "nan"


def test_proportion_interval():
    low, high = proportion_interval(3, 3)
    assert low == pytest.approx(0.4644, abs=1e-3) and high == 1.0  # Jeffreys: 3 of 3 right is still uncertain
    assert proportion_interval(0, 3)[0] == 0.0
    low, high = proportion_interval(50, 100)
    assert low == pytest.approx(0.4032, abs=1e-3) and high == pytest.approx(0.5968, abs=1e-3)
    assert all(math.isnan(x) for x in proportion_interval(0, 0))
