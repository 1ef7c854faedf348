"""Uncertainty of the DFEW metrics: bootstrap intervals for UAR and WAR, paired comparisons, McNemar.

All intervals come from a **class-stratified bootstrap over clips**: each resample draws, within
every true class, as many clips as that class has, with replacement. The class counts therefore
stay fixed (as they are in a DFEW test fold) and UAR, the mean recall over the classes present
(see `metrics.py`), is defined in every resample. Intervals are percentile intervals of the
resampled statistic; `tests/test_stats.py` checks by simulation that the 95% interval covers the
true UAR about 95% of the time.

Comparisons of two systems are **paired**: both are scored on the same resampled clips, so the
interval of the difference reflects only the clips on which they disagree. McNemar's exact test
asks the same question of the discordant clips (a right where b is wrong, and the reverse).

Implementation: resampling n_c clips of class c with replacement and counting how many of them
fall into each outcome cell (right / wrong; for a pair: a only right, b only right, same outcome)
gives multinomial cell counts with the observed cell shares as probabilities. UAR, WAR and their
differences depend on the resample only through those counts, so the counts are drawn directly:
the same distribution as index matrices, at a cost of O(classes) per resample instead of O(clips)
(2,000 resamples of 12,000 pooled DFEW clips take milliseconds and no memory to speak of).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import binomtest

N_BOOT = 2000  # bootstrap resamples: Monte Carlo error of a 95% bound ≈ 0.06 standard errors of the metric
LEVEL = 0.95  # confidence level of every interval
METHOD = "class-stratified percentile bootstrap"
PAIRED_METHOD = "paired class-stratified percentile bootstrap"
METRICS = ("uar", "war")


def metric_intervals(y_true: Sequence[int], y_pred: Sequence[int], *, n_boot: int = N_BOOT,
                     level: float = LEVEL, seed: int = 0) -> dict:
    """UAR and WAR with bootstrap intervals.

    Returns {"uar": {"value", "low", "high"}, "war": {...}, "n_boot", "level", "method"}. `value`
    is the metric on the clips given (identical to `classification_metrics`); `low`/`high` are the
    (1 - level)/2 and (1 + level)/2 percentiles of the class-stratified bootstrap. All NaN without
    clips. A class with all clips right (or all wrong) contributes no spread: with few clips the
    interval is then too narrow, so read intervals on a handful of clips as a lower bound on the noise.
    """
    y_true, correct = _correct(y_true, y_pred)
    _check(n_boot, level)
    if y_true.size == 0:
        nan = {"value": math.nan, "low": math.nan, "high": math.nan}
        return {"uar": dict(nan), "war": dict(nan), "n_boot": n_boot, "level": level, "method": METHOD}
    n_c, right_c = _per_class(y_true, correct)  # (C,), (C,)
    rng = np.random.default_rng(seed)
    hits = rng.binomial(n_c, right_c / n_c, size=(n_boot, n_c.size))  # (B, C) right clips per class
    samples = {"uar": (hits / n_c).mean(axis=1), "war": hits.sum(axis=1) / y_true.size}  # (B,) each
    values = {"uar": float((right_c / n_c).mean()), "war": float(right_c.sum() / y_true.size)}
    out = {}
    for name in METRICS:
        low, high = _percentiles(samples[name], level)
        out[name] = {"value": values[name], "low": low, "high": high}
    return {**out, "n_boot": n_boot, "level": level, "method": METHOD}


def paired_difference(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], *,
                      metric: str = "uar", n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """metric(a) - metric(b) on the same clips, with a paired bootstrap interval and p-value.

    Returns {"diff", "low", "high", "p"}. Each resample draws the same clips for both systems.
    `p` is the two-sided bootstrap p-value 2 * min(share of resampled differences <= 0, share >= 0),
    with one added to numerator and denominator so that it is never exactly 0 (smallest value
    2 / (n_boot + 1)), capped at 1: it is below 1 - level exactly when the percentile interval
    excludes 0. Identical predictions give diff 0, interval [0, 0] and p = 1.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    y_true, right_a = _correct(y_true, pred_a)
    _, right_b = _correct(y_true, pred_b)
    _check(n_boot, level)
    if y_true.size == 0:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    n_c, a_only = _per_class(y_true, right_a & ~right_b)
    _, b_only = _per_class(y_true, right_b & ~right_a)
    # cells per class: a only right, b only right, same outcome (both right or both wrong)
    shares = np.stack([a_only, b_only, n_c - a_only - b_only], axis=1) / n_c[:, None]  # (C, 3)
    rng = np.random.default_rng(seed)
    cells = rng.multinomial(n_c, shares, size=(n_boot, n_c.size))  # (B, C, 3)
    net = cells[..., 0] - cells[..., 1]  # (B, C) clips a gets right minus clips b gets right
    if metric == "uar":
        samples, diff = (net / n_c).mean(axis=1), float(((a_only - b_only) / n_c).mean())
    else:
        samples, diff = net.sum(axis=1) / y_true.size, float((a_only - b_only).sum() / y_true.size)
    low, high = _percentiles(samples, level)
    tail = min(int((samples <= 0).sum()), int((samples >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (n_boot + 1))
    return {"diff": diff, "low": low, "high": high, "p": p}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test on paired right/wrong outcomes of two systems on the same clips.

    Returns {"a_only", "b_only", "p"}: clips only a gets right, clips only b gets right, and the
    exact binomial p-value of a_only among a_only + b_only discordant clips under p = 0.5
    (scipy.stats.binomtest). p = 1 when there are no discordant clips.
    """
    a = np.asarray(correct_a).astype(bool).ravel()
    b = np.asarray(correct_b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} clips but correct_b has {b.size}")
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, p)}


def proportion_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (e.g. one class's recall); (nan, nan) when n == 0.

    Used where a single proportion rests on a handful of clips: unlike the bootstrap, it does not
    collapse to a point when all (or none) of them are right.
    """
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def format_interval(value: float, low: float, high: float, scale: float = 100.0, digits: int = 1) -> str:
    """'58.3 [41.2, 70.0]' (percent by default); 'nan' when undefined."""
    if any(x is None or math.isnan(x) for x in (value, low, high)):
        return "nan"
    return f"{scale * value:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


# -- helpers -------------------------------------------------------------------------------------
def _correct(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but the predictions have {y_pred.size}")
    return y_true, y_true == y_pred


def _per_class(y_true: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip count and count of `flags` per class present in y_true (classes in sorted order)."""
    _, index = np.unique(y_true, return_inverse=True)
    return np.bincount(index), np.bincount(index, weights=flags.astype(np.int64)).astype(np.int64)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = 1.0 - level
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
