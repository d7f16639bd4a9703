"""Confidence intervals for scores over a test set, so that every reported number carries its
uncertainty: Wilson for a proportion (0/1 per example), the percentile bootstrap for a mean of
per-example scores, and a paired bootstrap for a difference between two models on the same examples.

Per-example scores come from `metrics.per_example`. Intervals are in the units of the scores
(fractions in [0, 1]); `format_pm` scales them for display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

Scores = Sequence[float] | np.ndarray  # one score per example
_CHUNK = 4_000_000  # resampled indices held at once (resamples x n int64 = 32 MB): large test sets stay in memory bounds


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)  # two-sided: 1.959964 at 0.95


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927; Brown, Cai & DasGupta 2001):
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Unlike p ± z·sqrt(p(1-p)/n) it stays inside
    [0, 1] and does not collapse to a point at 0 or n successes. n = 0 gives (0, 1): nothing is known."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 there; rounding says 1e-17
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` resamples (with replacement, same size) of values; deterministic in seed."""
    n = len(values)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    out = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))  # (rows, n) example indices
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    _z(confidence)  # validates
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _as_array(scores: Scores, what: str = "scores") -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"{what} must be a non-empty list of numbers")
    return values


def bootstrap_mean(scores: Scores, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-example scores (Efron & Tibshirani 1993, ch. 13):
    resample the examples with replacement, take each resample's mean, read off the quantiles."""
    return _percentiles(_bootstrap_means(_as_array(scores), resamples, seed), confidence)


def paired_bootstrap(
    base: Scores, final: Scores, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of final - base, low, high) over the same examples scored twice. The resample draws example
    indices once for both models (Koehn 2004), i.e. it bootstraps the per-example differences: the
    variation that both models share (easy and hard examples) cancels, so the interval is much narrower
    than the difference of two independent intervals would suggest."""
    b, f = _as_array(base, "base"), _as_array(final, "final")
    if len(b) != len(f):
        raise ValueError(f"paired scores need the same examples: {len(b)} base vs {len(f)} final")
    diff = f - b
    low, high = _percentiles(_bootstrap_means(diff, resamples, seed), confidence)
    return float(diff.mean()), low, high


def interval(metric: str, scores: Scores, confidence: float = 0.95) -> dict:
    """{"n", "mean", "low", "high", "method"} for a metric's per-example scores, in their units.

    method is "wilson" when every score is 0 or 1 (accuracy, exact_match, syntax_valid, pass@1 per
    problem), else "bootstrap" (percentile, 2000 resamples, seed 0). For chrF and BLEU it is
    "sentence-bootstrap": the scores are sentence-level, so mean/low/high describe the mean sentence
    score, which is not the corpus score that `metrics.compute` reports. An empty list gives n = 0,
    mean 0.0 (as `compute` reports) and the uninformative (0, 1)."""
    from retune.evaluate.metrics import SENTENCE_LEVEL

    if len(scores) == 0:
        return {"n": 0, "mean": 0.0, "low": 0.0, "high": 1.0, "method": "wilson"}
    values = _as_array(scores)
    n, mean = len(values), float(values.mean())
    if np.all((values == 0) | (values == 1)):
        low, high = wilson(int(values.sum()), n, confidence)
        method = "wilson"
    else:
        low, high = bootstrap_mean(values, confidence)
        method = "sentence-bootstrap" if metric in SENTENCE_LEVEL else "bootstrap"
    return {"n": n, "mean": mean, "low": low, "high": high, "method": method}


def format_pm(mean: float, low: float, high: float, scale: float = 100, digits: int = 1) -> str:
    """A score with its interval for a report: "84.2 ± 2.9" (the half-width (high - low) / 2) when the
    two sides differ by at most 10% of the longer one, else the bounds, "97.5 [93.1, 99.2]" (Wilson near
    0 or 1 is lopsided, and a ± would put a bound past 100). Brackets rather than a dash, since a paired
    difference can be negative: "-1.2 [-3.4, -0.1]"."""
    m, lo, hi = mean * scale, low * scale, high * scale
    below, above = m - lo, hi - m
    if abs(above - below) <= 0.1 * max(above, below):
        return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
