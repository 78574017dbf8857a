"""The statistics of a study's verdicts: exact p-values, Holm, interval coverage, false verdicts and power."""

from __future__ import annotations

import numpy as np
import pytest

from rltransfer.study.simulate import SimulatedTarget, verdict_rates
from rltransfer.study.stats import (
    holm,
    median_interval,
    median_rank,
    seeds_needed,
    sign_flip_pvalue,
    smallest_pvalue,
)
from rltransfer.study.verdict import cannot_show


def test_sign_flip_pvalues_are_exact() -> None:
    assert sign_flip_pvalue([3.0] * 8) == 2 / 256  # only "all +" and "all -" reach |sum| = 24
    assert sign_flip_pvalue([1.0, -1.0]) == 1.0
    assert sign_flip_pvalue([0.0, 0.0, 0.0]) == 1.0 and sign_flip_pvalue([]) == 1.0
    # one zero difference cannot be flipped into anything else: it doubles the p-value
    assert sign_flip_pvalue([2.0] * 7 + [0.0]) == 4 / 256
    # scale-free and symmetric
    values = [5.0, 3.0, -1.0, 4.0, 2.0, 6.0]
    assert sign_flip_pvalue(values) == sign_flip_pvalue([-1000 * v for v in values])
    # of the 64 flips only four reach |sum| >= 19: none, the -1 alone, all, and all but the -1
    assert sign_flip_pvalue(values) == pytest.approx(4 / 64)
    # above 16 values: a seeded Monte Carlo, reproducible and close to the exact 2 / 2^20
    many = sign_flip_pvalue([1.0] * 20)
    assert many == sign_flip_pvalue([1.0] * 20) and many < 1e-3


def test_seeds_needed_follow_from_the_smallest_pvalue() -> None:
    assert smallest_pvalue(5) == 2 / 32 > 0.05  # 5 seeds can never be significant at 5%
    assert seeds_needed(1) == 6 and seeds_needed(3) == 7 and seeds_needed(6) == 8 and seeds_needed(12) == 9
    assert cannot_show(3, 3, 7) == "3 seeds cannot show a difference at 5% (3 tests): use at least 7 seeds"


def test_holm_adjusts_step_down() -> None:
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"x": 0.5, "y": 0.9}) == pytest.approx({"x": 1.0, "y": 1.0})


@pytest.mark.parametrize("n", [3, 5, 6, 8, 10, 15])
def test_median_intervals_have_their_stated_coverage(n: int) -> None:
    rank, coverage = median_rank(n)
    assert coverage >= 0.95 or rank == 1  # below 6 seeds only the range exists, with its own lower coverage
    rng = np.random.default_rng(n)
    trials = 4000
    samplers = {
        "lognormal": (lambda: rng.lognormal(10.0, 0.5, n), np.exp(10.0)),
        "eval grid": (
            lambda: rng.choice([5000.0, 7500.0, 10000.0, 12500.0], n, p=[0.2, 0.3, 0.3, 0.2]),
            8750.0,
        ),
    }
    for sample, true_median in samplers.values():
        covered = 0
        for _ in range(trials):
            _, low, high, _ = median_interval(sample())
            covered += low <= true_median <= high
        assert covered / trials >= coverage - 0.012  # three standard errors below the stated coverage


def test_no_effect_studies_get_a_false_verdict_at_most_5_percent_of_the_time() -> None:
    # fewer than 7 seeds cannot reach 5% by arithmetic (checked with fewer studies); most studies around the default
    studies = {1: 100, 2: 100, 3: 100, 4: 100, 5: 100, 6: 100, 7: 1000, 8: 1000, 9: 1000, 10: 400, 12: 400}
    measured = {
        seeds: verdict_rates(seeds, {"finetune": 1.0}, studies=count, seed=seeds).false_verdict
        for seeds, count in studies.items()
    }
    # two no-effect strategies: six tests under one correction
    both = verdict_rates(8, {"finetune": 1.0, "head-only": 1.0}, studies=500, seed=108)
    measured[8, "two strategies"] = both.false_verdict
    assert all(rate <= 0.05 for rate in measured.values()), measured
    assert all(measured[seeds] == 0.0 for seeds in range(1, 7))  # fewer than 7 seeds never claim anything
    assert sum(studies.values()) + both.studies >= 4000


def test_a_real_2x_speed_up_is_found_at_the_default_seed_count() -> None:
    from rltransfer.study.config import StudyConfig

    default = StudyConfig.model_fields["seeds"].default
    assert default == 8
    rates = verdict_rates(default, {"finetune": 2.0}, studies=500, seed=1)
    assert rates.faster["finetune"] >= 0.8
    # with more spread than CartPole's measured log-sd of 0.17 the default still has the power
    wider = verdict_rates(
        default, {"finetune": 2.0}, studies=300, seed=2, target=SimulatedTarget(log_sd=0.25)
    )
    assert wider.faster["finetune"] >= 0.8
    slower = verdict_rates(default, {"finetune": 0.5}, studies=200, seed=3)
    assert slower.faster["finetune"] == 0.0
