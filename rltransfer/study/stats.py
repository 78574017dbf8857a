"""The statistics behind a study's verdicts: a paired sign-flip test, Holm's correction, intervals for the median.

Seeds are paired (strategy and scratch share each seed), so each verdict tests the per-seed differences with an
exact sign-flip permutation test: under "no effect" a difference is as likely to be positive as negative. Holm's
step-down procedure keeps the chance of any false verdict in a family of tests at or below ``alpha``. Intervals
for a median come from order statistics, which cover the median with at least the stated probability for any
distribution, ties included; where the seeds are too few for a 95% interval the range is shown with its true,
lower coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TypeVar

import numpy as np

ALPHA = 0.05
EXACT_UP_TO = 16  # seeds for which the sign-flip test enumerates all 2^n flips; above: a seeded Monte Carlo
MONTE_CARLO_FLIPS = 20_000

Key = TypeVar("Key")


@lru_cache(maxsize=EXACT_UP_TO + 1)
def _all_signs(n: int) -> np.ndarray:
    codes = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)[None, :]
    return np.where(codes & 1, -1.0, 1.0)


def sign_flip_pvalue(differences: Sequence[float], *, seed: int = 0) -> float:
    """Two-sided p-value that the paired differences are centred on 0 (exact up to 16 values).

    The statistic is |sum of differences|; the p-value is the share of the 2^n sign flips that reach it. NaN
    differences are left out; no values give 1.
    """
    data = np.asarray([d for d in differences if not math.isnan(d)], dtype=float)
    if data.size == 0 or not np.any(data):
        return 1.0
    data = data / np.max(np.abs(data))  # scale-free, so the tolerance below means the same for any unit
    observed = abs(data.sum())
    tolerance = 1e-9 * data.size
    if data.size <= EXACT_UP_TO:
        sums = np.abs(_all_signs(data.size) @ data)
        return float(np.mean(sums >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(MONTE_CARLO_FLIPS, data.size))
    hits = np.sum(np.abs(signs @ data) >= observed - tolerance)
    return float((hits + 1) / (MONTE_CARLO_FLIPS + 1))


def smallest_pvalue(n: int) -> float:
    """The smallest two-sided p-value the sign-flip test can give with n paired seeds (all agree in sign)."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0**n)


def seeds_needed(tests: int, alpha: float = ALPHA) -> int:
    """Fewest paired seeds with which the first of ``tests`` Holm-corrected tests can be significant at all."""
    n = 1
    while smallest_pvalue(n) > alpha / max(tests, 1):
        n += 1
    return n


def holm(pvalues: Mapping[Key, float], alpha: float = ALPHA) -> dict[Key, float]:
    """Holm-adjusted p-values: a test is significant at ``alpha`` family-wise when its adjusted value is <= alpha."""
    order = sorted(pvalues, key=lambda key: pvalues[key])
    adjusted: dict[Key, float] = {}
    running = 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        adjusted[key] = running
    return adjusted


def _binomial_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n if k >= 0 else 0.0


@lru_cache(maxsize=256)
def median_rank(n: int, confidence: float = 0.95) -> tuple[int, float]:
    """(r, coverage): the interval [x_(r), x_(n+1-r)] of the sorted values covers the median with ``coverage``.

    r is the largest rank whose coverage is still >= ``confidence``; when even the range (r = 1) falls short, r is
    1 and the coverage returned is the range's own, lower one.
    """
    best = 1
    for r in range(1, (n + 1) // 2 + 1):
        if 1.0 - 2.0 * _binomial_cdf(r - 1, n) >= confidence:
            best = r
    return best, 1.0 - 2.0 * _binomial_cdf(best - 1, n)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage) of the values, NaN left out; the interval is from order statistics."""
    data = np.sort(np.asarray([v for v in values if not math.isnan(v)], dtype=float))
    if data.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    rank, coverage = median_rank(data.size, confidence)
    return float(np.median(data)), float(data[rank - 1]), float(data[data.size - rank]), coverage
