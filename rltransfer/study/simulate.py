"""Simulated studies: how often the verdicts are wrong with no effect, and how often a real speed-up is found.

Each simulated run is a noisy learning curve that climbs from a low return to the ceiling, reaching the threshold
after a log-normally distributed number of steps, evaluated on the study's grid and cut at its budget; a strategy
with speed-up ``k`` draws its times from the same distribution divided by ``k``. The curves go through the
study's own ``seed_metrics`` and ``target_verdicts``, so what is measured is what a study
reports. The defaults are the CartPole short-pole target of the main job (``configs/cartpole/study.yaml``):
scratch's median time to 475 over its 8 seeds was 21,250 steps, with a standard deviation of log time of 0.17.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rltransfer.study.metrics import seed_metrics
from rltransfer.study.verdict import Verdict, target_verdicts


@dataclass(frozen=True)
class SimulatedTarget:
    """The measured shape of a target's scratch runs (default: CartPole's short pole in the main job)."""

    median_time: float = 21_250.0
    log_sd: float = 0.17
    budget: int = 30_000
    every: int = 2_500
    ceiling: float = 500.0
    threshold: float = 475.0
    start: float = 20.0
    noise: float = 25.0


def simulated_curve(
    rng: np.random.Generator, time: float, target: SimulatedTarget
) -> list[tuple[float, float]]:
    """One run: the return climbs linearly from ``start`` to the ceiling at ``time`` steps, plus evaluation noise."""
    steps = np.arange(0, target.budget + 1, target.every, dtype=float)
    start = target.start * rng.uniform(0.2, 2.0)
    progress = np.clip(steps / max(time, 1.0), 0.0, 1.0)
    mean = start + (target.ceiling - start) * progress
    noisy = mean + rng.normal(0.0, target.noise, size=steps.size) * (1.0 - 0.9 * progress)
    returns = np.clip(noisy, 0.0, target.ceiling)
    return list(zip(steps.tolist(), returns.tolist(), strict=True))


def simulate_study(
    rng: np.random.Generator, seeds: int, speedups: Mapping[str, float], target: SimulatedTarget
) -> dict[str, Verdict]:
    """One simulated target: scratch plus each named strategy at its true speed-up, ``seeds`` paired seeds."""
    times = lambda k: target.median_time * np.exp(rng.normal(0.0, target.log_sd, size=seeds)) / k  # noqa: E731
    scratch = [simulated_curve(rng, t, target) for t in times(1.0)]
    paired = {}
    for strategy, speedup in speedups.items():
        curves = [simulated_curve(rng, t, target) for t in times(speedup)]
        paired[strategy] = [
            seed_metrics(s, curves[s], scratch[s], threshold=target.threshold, budget=target.budget)
            for s in range(seeds)
        ]
    return target_verdicts(paired)


@dataclass(frozen=True)
class VerdictRates:
    """Over simulated studies: the share with any verdict on a no-effect strategy, and per strategy the share
    found faster than scratch."""

    studies: int
    seeds: int
    false_verdict: float
    faster: dict[str, float]


def verdict_rates(
    seeds: int,
    speedups: Mapping[str, float],
    *,
    studies: int = 1000,
    seed: int = 0,
    target: SimulatedTarget | None = None,
) -> VerdictRates:
    """Run ``studies`` simulated studies; a strategy with speed-up 1 is a no-effect strategy."""
    target = target or SimulatedTarget()
    rng = np.random.default_rng(seed)
    false = 0
    faster = dict.fromkeys(speedups, 0)
    for _ in range(studies):
        verdicts = simulate_study(rng, seeds, speedups, target)
        null = [s for s, k in speedups.items() if k == 1.0]
        false += any(
            v.negative_transfer or any(t.significant for t in v.tests)
            for s, v in verdicts.items()
            if s in null
        )
        for strategy, verdict in verdicts.items():
            faster[strategy] += "faster than scratch" in verdict.text
    return VerdictRates(studies, seeds, false / studies, {s: n / studies for s, n in faster.items()})
