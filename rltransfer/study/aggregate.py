"""The study across targets and seeds in the style of rliable (Agarwal et al., NeurIPS 2021), computed with rliable.

Returns are normalised per target so that 0 is scratch's median return before training (step 0) and 1 is the
target's threshold. Two scores per run: *final* (the normalised asymptotic return, mean of the last evaluations)
and *area* (the normalised return averaged over the whole evaluation curve: sample efficiency in one number).
Shown: the interquartile mean (IQM) of each score with a stratified-bootstrap 95% interval, the probability that
a strategy's run beats scratch's on the same target, performance profiles of the area score, and IQM
sample-efficiency curves with bands. Bootstrap intervals are indicative at few seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rltransfer.study.metrics import area_under_curve, asymptotic_return, initial_return

Curves = Mapping[str, Mapping[str, Mapping[int, list]]]  # target -> strategy -> seed -> curve
Estimate = tuple[float, float, float]  # point, low, high

REPS = 2000
BASELINE = "scratch"


@dataclass
class Aggregate:
    """The aggregate view; empty ``strategies`` when no seed has finished runs of every strategy on every target."""

    targets: list[str]
    strategies: list[str]
    seeds: list[int]
    normalisation: dict[str, tuple[float, float]]
    iqm: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # score -> strategy -> estimate
    improvement: dict[str, dict[str, Estimate]] = field(
        default_factory=dict
    )  # score -> strategy -> P(> scratch)
    taus: list[float] = field(default_factory=list)
    profiles: dict[str, list[list[float]]] = field(default_factory=dict)  # strategy -> [profile, low, high]
    steps: list[float] = field(default_factory=list)
    efficiency: dict[str, list[list[float]]] = field(default_factory=dict)  # strategy -> [iqm, low, high]

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "strategies": self.strategies,
            "seeds": self.seeds,
            "normalisation": {t: {"zero": lo, "one": hi} for t, (lo, hi) in self.normalisation.items()},
            "iqm": _listed(self.iqm),
            "probability_of_improvement": _listed(self.improvement),
            "performance_profile": {"taus": self.taus, "area": self.profiles},
            "sample_efficiency": {"steps": self.steps, "iqm": self.efficiency},
        }


def _listed(data: dict[str, dict[str, Estimate]]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        score: {s: {"point": e[0], "low": e[1], "high": e[2]} for s, e in by.items()}
        for score, by in data.items()
    }


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's bootstrap draws from NumPy's global generator: seed it for a reproducible report, then restore."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _common_seeds(curves: Curves, targets: list[str], strategies: list[str]) -> list[int]:
    sets = [set(curves.get(t, {}).get(s, {})) for t in targets for s in strategies]
    return sorted(set.intersection(*sets)) if sets else []


def normalisation(curves: Curves, thresholds: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Per target: (scratch's median initial return, the threshold), the returns mapped to 0 and 1."""
    result = {}
    for target, threshold in thresholds.items():
        starts = [initial_return(c) for c in curves.get(target, {}).get(BASELINE, {}).values()]
        result[target] = (float(np.median(starts)) if starts else 0.0, float(threshold))
    return result


def _scale(value: np.ndarray | float, zero: float, one: float) -> np.ndarray | float:
    span = one - zero
    return (value - zero) / (span if abs(span) > 1e-12 else 1.0)


def aggregate(
    curves: Curves, thresholds: Mapping[str, float], strategies: list[str], *, last: int
) -> Aggregate:
    """IQM, probability of improvement, profiles and sample-efficiency curves over every target and common seed."""
    targets = [t for t in thresholds if BASELINE in curves.get(t, {})]
    strategies = [s for s in strategies if all(s in curves.get(t, {}) for t in targets)]
    seeds = _common_seeds(curves, targets, strategies)
    norm = normalisation(curves, thresholds)
    result = Aggregate(targets, strategies if seeds else [], seeds, {t: norm[t] for t in targets})
    if not seeds or BASELINE not in strategies:
        return result
    # deferred: rliable imports arch, statsmodels and pandas, seconds that only a report needs
    from rliable import library as rly

    final, area, grid, steps = _scores(curves, targets, strategies, seeds, norm, last)
    with _seeded(0):
        for name, scores in (("final", final), ("area", area)):
            points, intervals = rly.get_interval_estimates(scores, lambda x: np.array([_iqm(x)]), reps=REPS)
            result.iqm[name] = {s: _estimate(points[s], intervals[s]) for s in strategies}
            pairs = {s: (scores[s], scores[BASELINE]) for s in strategies if s != BASELINE}
            points, intervals = rly.get_interval_estimates(
                pairs, lambda x, y: np.array([probability_of_improvement(x, y)]), reps=REPS
            )
            result.improvement[name] = {s: _estimate(points[s], intervals[s]) for s in pairs}
        top = max(1.0, max(float(np.max(v)) for v in area.values()))
        taus = np.linspace(min(0.0, min(float(np.min(v)) for v in area.values())), top * 1.05, 61)
        profiles, bands = rly.create_performance_profile(
            area, taus, custom_profile_func=_score_distribution, reps=REPS
        )
        result.taus = taus.tolist()
        result.profiles = {s: [profiles[s].tolist(), *bands[s].tolist()] for s in strategies}
        points, intervals = rly.get_interval_estimates(grid, _iqm_per_step, reps=REPS // 4)
        result.steps = steps
        result.efficiency = {s: [points[s].tolist(), *intervals[s].tolist()] for s in strategies}
    return result


# The statistics below are rliable's (same values, to the last bit or two of rounding), vectorised: the
# bootstrap calls each thousands of times per report, and rliable's versions loop in Python.


def _trimmed_mean(values: np.ndarray) -> np.ndarray:
    """scipy's ``trim_mean(values, 0.25, axis=0)``: the mean of the middle half of each column."""
    cut = int(0.25 * values.shape[0])
    return np.sort(values, axis=0)[cut : values.shape[0] - cut].mean(axis=0)


def _iqm(scores: np.ndarray) -> float:
    """rliable's ``aggregate_iqm``: the interquartile mean over every run and target."""
    return float(_trimmed_mean(scores.reshape(-1)))


def _iqm_per_step(scores: np.ndarray) -> np.ndarray:
    """The IQM of each step of (runs x targets x steps) scores."""
    return _trimmed_mean(scores.reshape(-1, scores.shape[-1]))


def _score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's ``score_distributions``: the fraction of runs x targets scoring above each tau."""
    return (scores.reshape(-1)[:, None] > taus[None, :]).mean(axis=0)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement`` (the Mann-Whitney U statistic over n x m, averaged over
    targets), computed over all pairs at once: the bootstrap calls it thousands of times per report."""
    x, y = scores_x[:, None, :], scores_y[None, :, :]  # runs_x x runs_y x targets
    per_target = ((x > y) + 0.5 * (x == y)).mean(axis=(0, 1))
    return float(per_target.mean())


def _estimate(point: np.ndarray, interval: np.ndarray) -> Estimate:
    return float(point[0]), float(interval[0][0]), float(interval[1][0])


def _scores(
    curves: Curves,
    targets: list[str],
    strategies: list[str],
    seeds: list[int],
    norm: dict[str, tuple[float, float]],
    last: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], list[float]]:
    """(runs x targets) final and area scores, and (runs x targets x steps) normalised curves, per strategy."""
    length = min(len(curves[t][s][seed]) for t in targets for s in strategies for seed in seeds)
    final, area, grid = {}, {}, {}
    for strategy in strategies:
        f = np.zeros((len(seeds), len(targets)))
        a = np.zeros_like(f)
        g = np.zeros((len(seeds), len(targets), length))
        for j, target in enumerate(targets):
            zero, one = norm[target]
            for i, seed in enumerate(seeds):
                curve = curves[target][strategy][seed]
                f[i, j] = _scale(asymptotic_return(curve, last), zero, one)
                span = curve[-1][0] - curve[0][0]
                mean_return = area_under_curve(curve) / span if span > 0 else initial_return(curve)
                a[i, j] = _scale(mean_return, zero, one)
                g[i, j] = _scale(np.asarray([point[1] for point in curve[:length]], dtype=float), zero, one)
        final[strategy], area[strategy], grid[strategy] = f, a, g
    first = curves[targets[0]][strategies[0]][seeds[0]]
    return final, area, grid, [float(point[0]) for point in first[:length]]


def figure(result: Aggregate) -> Figure:
    """Four panels: IQM with intervals, probability of improvement, performance profile, sample efficiency."""
    fig = Figure(figsize=(18, 4))
    axes = fig.subplots(1, 4)
    strategies = result.strategies
    colours = {s: f"C{i}" if s != BASELINE else "black" for i, s in enumerate(strategies)}
    for row, score in enumerate(("final", "area")):
        for k, strategy in enumerate(strategies):
            point, low, high = result.iqm[score][strategy]
            y = k + 0.2 * (row * 2 - 1)
            axes[0].errorbar(
                point,
                y,
                xerr=[[point - low], [high - point]],
                fmt="o" if row else "s",
                color=colours[strategy],
                capsize=3,
                label=f"{score} score" if k == 0 else None,
            )
    axes[0].set_yticks(range(len(strategies)), strategies)
    axes[0].set_ylim(-0.6, len(strategies) - 0.4)
    axes[0].set_xlabel("IQM of the normalised score (95% interval)")
    axes[0].legend(fontsize=8)
    others = [s for s in strategies if s != BASELINE]
    for k, strategy in enumerate(others):
        for row, score in enumerate(("final", "area")):
            point, low, high = result.improvement[score][strategy]
            axes[1].errorbar(
                point,
                k + 0.2 * (row * 2 - 1),
                xerr=[[point - low], [high - point]],
                fmt="o" if row else "s",
                color=colours[strategy],
                capsize=3,
            )
    axes[1].axvline(0.5, color="grey", linestyle=":")
    axes[1].set_yticks(range(len(others)), others)
    axes[1].set_ylim(-0.6, len(others) - 0.4)
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("P(strategy run > scratch run) (squares: final, dots: area)")
    for strategy in strategies:
        profile, low, high = result.profiles[strategy]
        axes[2].plot(result.taus, profile, color=colours[strategy], label=strategy)
        axes[2].fill_between(result.taus, low, high, color=colours[strategy], alpha=0.2)
        iqm, low, high = result.efficiency[strategy]
        axes[3].plot(result.steps, iqm, color=colours[strategy], label=strategy)
        axes[3].fill_between(result.steps, low, high, color=colours[strategy], alpha=0.2)
    axes[2].set_xlabel("normalised area score tau")
    axes[2].set_ylabel("fraction of runs with score > tau")
    axes[2].legend(fontsize=8)
    axes[3].axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes[3].set_xlabel("environment steps")
    axes[3].set_ylabel("IQM normalised return (95% band)")
    fig.suptitle(
        f"{len(result.targets)} targets x {len(result.seeds)} seeds; 0 = scratch before training, 1 = threshold",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def format_aggregate(result: Aggregate) -> list[str]:
    """Markdown lines: the IQM and probability-of-improvement table, and how scores were normalised."""
    if not result.strategies:
        return ["No seed has finished runs of every strategy on every target: no aggregate view."]
    show = lambda e: "nan" if math.isnan(e[0]) else f"{e[0]:.2f} [{e[1]:.2f}, {e[2]:.2f}]"  # noqa: E731
    lines = [
        f"Over {len(result.targets)} targets x {len(result.seeds)} seeds (seeds {result.seeds}); returns "
        "normalised per target, 0 = scratch's median return before training, 1 = the threshold ("
        + ", ".join(f"{t}: {lo:g} -> {hi:g}" for t, (lo, hi) in result.normalisation.items())
        + "). Intervals: stratified bootstrap 95% (rliable), indicative at few seeds.",
        "",
        "| strategy | IQM final score | IQM area score | P(> scratch), final | P(> scratch), area |",
        "|---|---|---|---|---|",
    ]
    for strategy in result.strategies:
        cells = [show(result.iqm["final"][strategy]), show(result.iqm["area"][strategy])]
        for score in ("final", "area"):
            cells.append(
                show(result.improvement[score][strategy]) if strategy in result.improvement[score] else "-"
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines
