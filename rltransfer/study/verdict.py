"""A target's verdicts: each strategy against scratch, paired tests, family-wise error held at 5% by Holm.

Per target, every strategy is tested against scratch on three paired differences (steps saved to the threshold,
asymptotic gain, area gain), each two-sided. The target's tests form one family: Holm's correction keeps the
chance that a target with no real effect gets any verdict at or below 5%. A verdict is stated only for a test
significant after correction; when the seeds are too few for any test to be significant, the verdict says so and
how many seeds are needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rltransfer.study.metrics import SeedMetrics, json_safe
from rltransfer.study.stats import ALPHA, holm, seeds_needed, sign_flip_pvalue

# (metric, paired difference tested, verdict when above 0, reason for negative transfer when below 0)
TESTED = (
    ("speed", "steps_saved", "faster than scratch", "slower to the threshold than scratch"),
    ("asymptote", "asymptotic_gain", "higher asymptote than scratch", "lower asymptote than scratch"),
    ("area", "auc_gain", "larger area under the curve", "smaller area under the curve than scratch"),
)


@dataclass(frozen=True)
class PairedTest:
    """One strategy-against-scratch test: the mean paired difference, its p-value and Holm-adjusted p-value."""

    metric: str
    difference: str
    mean: float
    n: int
    pvalue: float
    adjusted: float
    significant: bool


@dataclass(frozen=True)
class Verdict:
    """What a strategy's tests allow saying, in words, with the tests behind it."""

    text: str
    negative_transfer: bool
    negative_reasons: list[str]
    seeds: int
    seeds_needed: int
    tests: list[PairedTest]

    def as_dict(self) -> dict:
        data = asdict(self)
        data["tests"] = [json_safe(asdict(test)) for test in self.tests]
        return data


def cannot_show(seeds: int, tests: int, needed: int, alpha: float = ALPHA) -> str:
    """The verdict when no test can be significant: how many seeds would be needed."""
    plural = "seed" if seeds == 1 else "seeds"
    return f"{seeds} {plural} cannot show a difference at {alpha:.0%} ({tests} tests): use at least {needed} seeds"


def target_verdicts(paired: Mapping[str, Sequence[SeedMetrics]], alpha: float = ALPHA) -> dict[str, Verdict]:
    """Verdicts for every strategy of one target (not scratch) from its paired seeds, Holm-corrected across
    strategies and metrics."""
    pvalues: dict[tuple[str, str], float] = {}
    means: dict[tuple[str, str], tuple[float, int]] = {}
    for strategy, per_seed in paired.items():
        for metric, difference, _, _ in TESTED:
            values = [getattr(seed, difference) for seed in per_seed]
            values = [v for v in values if np.isfinite(v)]
            pvalues[strategy, metric] = sign_flip_pvalue(values)
            means[strategy, metric] = (float(np.mean(values)) if values else 0.0, len(values))
    adjusted = holm(pvalues, alpha)
    needed = seeds_needed(len(pvalues), alpha)
    verdicts = {}
    for strategy, per_seed in paired.items():
        tests = [
            PairedTest(
                metric=metric,
                difference=difference,
                mean=means[strategy, metric][0],
                n=means[strategy, metric][1],
                pvalue=pvalues[strategy, metric],
                adjusted=adjusted[strategy, metric],
                significant=adjusted[strategy, metric] <= alpha,
            )
            for metric, difference, _, _ in TESTED
        ]
        verdicts[strategy] = _verdict(len(per_seed), needed, tests, len(pvalues), alpha)
    return verdicts


def _verdict(seeds: int, needed: int, tests: list[PairedTest], family: int, alpha: float) -> Verdict:
    words = {metric: (better, worse) for metric, _, better, worse in TESTED}
    gains = [words[t.metric][0] for t in tests if t.significant and t.mean > 0]
    losses = [words[t.metric][1] for t in tests if t.significant and t.mean < 0]
    if losses:
        text = "NEGATIVE TRANSFER (" + ", ".join(losses) + ")" + "".join(f", {g}" for g in gains)
    elif gains:
        text = ", ".join(gains)
    elif seeds < needed:
        text = cannot_show(seeds, family, needed, alpha)
    else:
        text = "no clear difference"
    return Verdict(text, bool(losses), losses, seeds, needed, tests)
