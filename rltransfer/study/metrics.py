"""The standard transfer metrics (Taylor & Stone 2009; Zhu et al. 2023), computed from evaluation curves.

Every metric is computed per seed, pairing a strategy's run with the scratch run of the same seed, then summarised
across seeds as a median with an order-statistic interval (rltransfer.study.stats). A run that never reaches the
threshold is censored at the budget: its time to threshold is the budget, flagged, never dropped. Verdicts are not
made here but in rltransfer.study.verdict, from paired tests over all of a target's strategies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rltransfer.study.stats import median_interval

Curve = Sequence[tuple[float, float]]  # (environment step, mean evaluation return), step 0 first


@dataclass(frozen=True)
class Threshold:
    """When a curve first reaches a return, and when it reaches it for good; `censored` when it never does."""

    first: float
    stable: float
    censored: bool
    stable_censored: bool


@dataclass(frozen=True)
class Summary:
    """Median across seeds with an interval covering it with probability ``coverage`` (95% or more from 6 seeds)."""

    median: float
    low: float
    high: float
    n: int
    coverage: float = math.nan

    @property
    def indicative(self) -> bool:
        """Too few seeds for a 95% interval: the range of the seeds is shown, with its lower coverage."""
        return not self.coverage >= 0.95

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value

    def format(self, digits: int = 2) -> str:
        def show(x: float) -> str:
            return "inf" if math.isinf(x) else f"{x:,.{digits}f}"

        return f"{show(self.median)} [{show(self.low)}, {show(self.high)}]"


def _steps_returns(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    if len(curve) == 0:
        raise ValueError("an evaluation curve needs at least one point")
    data = np.asarray(curve, dtype=float)
    order = np.argsort(data[:, 0], kind="stable")
    return data[order, 0], data[order, 1]


def initial_return(curve: Curve) -> float:
    """The evaluation return at the first point (step 0: before any training)."""
    return float(_steps_returns(curve)[1][0])


def asymptotic_return(curve: Curve, last: int = 3) -> float:
    """Mean of the last `last` evaluations."""
    returns = _steps_returns(curve)[1]
    return float(np.mean(returns[-last:]))


def area_under_curve(curve: Curve) -> float:
    """Total reward: the trapezoid area under the evaluation curve, in return x steps."""
    steps, returns = _steps_returns(curve)
    if len(steps) == 1:
        return 0.0
    return float(np.sum((returns[1:] + returns[:-1]) / 2.0 * np.diff(steps)))


def within_budget(curve: Curve, budget: float) -> list[tuple[float, float]]:
    """The evaluations at or before `budget` (SB3 finishes its last rollout, so runs can overshoot it)."""
    return [(step, value) for step, value in curve if step <= budget]


def time_to_threshold(curve: Curve, threshold: float, budget: float) -> Threshold:
    """First step with return >= threshold, and the first step after which every evaluation stays there."""
    steps, returns = _steps_returns(within_budget(curve, budget) or curve[:1])
    above = returns >= threshold
    first = float(steps[np.argmax(above)]) if above.any() else float(budget)
    # stable: the start of the final run of evaluations at or above the threshold
    if above[-1]:
        below = np.flatnonzero(~above)
        stable = float(steps[below[-1] + 1]) if below.size else float(steps[0])
    else:
        stable = float(budget)
    return Threshold(first=first, stable=stable, censored=not above.any(), stable_censored=not above[-1])


def speedup(scratch_steps: float, transfer_steps: float) -> float:
    """scratch_steps / transfer_steps; infinite when only the transfer run needed no training, 1 when neither did."""
    if transfer_steps <= 0:
        return 1.0 if scratch_steps <= 0 else math.inf
    return scratch_steps / transfer_steps


def transfer_ratio(auc_transfer: float, auc_scratch: float) -> float:
    """(AUC_transfer - AUC_scratch) / |AUC_scratch| (NaN when scratch's area is 0)."""
    if auc_scratch == 0:
        return math.nan
    return (auc_transfer - auc_scratch) / abs(auc_scratch)


def summarise(values: Sequence[float]) -> Summary:
    """Median of `values` (NaN left out) with its order-statistic interval (95% coverage or more from 6 values)."""
    median, low, high, coverage = median_interval(values)
    return Summary(median, low, high, sum(not math.isnan(v) for v in values), coverage)


@dataclass(frozen=True)
class SeedMetrics:
    """One seed's metrics for a strategy against scratch on the same seed."""

    seed: int
    jumpstart: float
    asymptotic: float
    asymptotic_gain: float
    auc: float
    transfer_ratio: float
    time_to_threshold: float
    censored: bool
    stable_time_to_threshold: float
    stable_censored: bool
    speedup: float
    stable_speedup: float
    steps_saved: float
    """Scratch's time to threshold minus the strategy's (positive: faster); the speed verdict tests this."""
    auc_gain: float
    """The strategy's area under the curve minus scratch's; the area verdict tests this."""


def seed_metrics(
    seed: int, transfer: Curve, scratch: Curve, *, threshold: float, budget: float, last: int = 3
) -> SeedMetrics:
    """All metrics of one transfer curve against the scratch curve of the same seed."""
    reach_t = time_to_threshold(transfer, threshold, budget)
    reach_s = time_to_threshold(scratch, threshold, budget)
    auc_t, auc_s = area_under_curve(transfer), area_under_curve(scratch)
    asym_t = asymptotic_return(transfer, last)
    return SeedMetrics(
        seed=seed,
        jumpstart=initial_return(transfer) - initial_return(scratch),
        asymptotic=asym_t,
        asymptotic_gain=asym_t - asymptotic_return(scratch, last),
        auc=auc_t,
        transfer_ratio=transfer_ratio(auc_t, auc_s),
        time_to_threshold=reach_t.first,
        censored=reach_t.censored,
        stable_time_to_threshold=reach_t.stable,
        stable_censored=reach_t.stable_censored,
        speedup=speedup(reach_s.first, reach_t.first),
        stable_speedup=speedup(reach_s.stable, reach_t.stable),
        steps_saved=reach_s.first - reach_t.first,
        auc_gain=auc_t - auc_s,
    )


SUMMARISED = (
    "jumpstart",
    "asymptotic",
    "asymptotic_gain",
    "auc",
    "transfer_ratio",
    "time_to_threshold",
    "stable_time_to_threshold",
    "speedup",
    "stable_speedup",
    "steps_saved",
    "auc_gain",
)


@dataclass(frozen=True)
class StrategyMetrics:
    """A strategy's metrics on one target: per seed and summarised across seeds."""

    per_seed: list[SeedMetrics]
    summary: dict[str, Summary]
    censored: int

    def as_dict(self) -> dict:
        return {
            "per_seed": [json_safe(asdict(m)) for m in self.per_seed],
            "summary": {k: json_safe(asdict(v)) for k, v in self.summary.items()},
            "censored": self.censored,
        }


def strategy_metrics(per_seed: list[SeedMetrics]) -> StrategyMetrics:
    """Every metric summarised across the paired seeds."""
    summary = {name: summarise([getattr(m, name) for m in per_seed]) for name in SUMMARISED}
    return StrategyMetrics(per_seed=per_seed, summary=summary, censored=sum(m.censored for m in per_seed))


def json_safe(data: dict) -> dict:
    """JSON-safe: infinities become the strings 'inf'/'-inf', NaN becomes None."""
    out = {}
    for key, value in data.items():
        if isinstance(value, float) and math.isnan(value):
            out[key] = None
        elif isinstance(value, float) and math.isinf(value):
            out[key] = "inf" if value > 0 else "-inf"
        else:
            out[key] = value
    return out
