"""Transfer metrics on hand-made curves with known answers."""

from __future__ import annotations

import math

import pytest

from rltransfer.study.metrics import (
    area_under_curve,
    asymptotic_return,
    bootstrap_median,
    seed_metrics,
    strategy_metrics,
    time_to_threshold,
)

SCRATCH = [(0, 10.0), (10, 100.0), (20, 300.0), (30, 480.0), (40, 500.0)]
TRANSFER = [(0, 200.0), (10, 490.0), (20, 400.0), (30, 500.0), (40, 500.0)]
NEVER = [(0, 10.0), (10, 20.0), (20, 30.0), (30, 40.0), (40, 50.0)]


def test_area_asymptote_and_threshold() -> None:
    assert area_under_curve([(0, 0.0), (10, 10.0)]) == 50.0
    assert area_under_curve(SCRATCH) == (55 + 200 + 390 + 490) * 10
    assert asymptotic_return(SCRATCH, last=2) == 490.0
    reach = time_to_threshold(TRANSFER, 475, budget=40)
    assert (reach.first, reach.stable, reach.censored) == (10, 30, False)  # dips at 20, stable from 30
    assert time_to_threshold(SCRATCH, 475, budget=40).first == 30


def test_censored_runs_count_as_the_budget() -> None:
    reach = time_to_threshold(NEVER, 475, budget=40)
    assert reach.censored and reach.first == 40 and reach.stable == 40
    metrics = seed_metrics(0, NEVER, SCRATCH, threshold=475, budget=40)
    assert metrics.censored and metrics.speedup == 30 / 40


def test_seed_metrics_against_scratch() -> None:
    m = seed_metrics(3, TRANSFER, SCRATCH, threshold=475, budget=40, last=2)
    assert m.jumpstart == 190.0
    assert m.asymptotic == 500.0 and m.asymptotic_gain == 10.0
    auc_s, auc_t = area_under_curve(SCRATCH), area_under_curve(TRANSFER)
    assert m.transfer_ratio == pytest.approx((auc_t - auc_s) / auc_s)
    assert m.speedup == 3.0 and m.stable_speedup == 1.0
    zero_shot = seed_metrics(0, [(0, 500.0), (10, 500.0)], SCRATCH, threshold=475, budget=40)
    assert math.isinf(zero_shot.speedup)


def test_bootstrap_median_interval() -> None:
    summary = bootstrap_median([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.median == 3.0 and summary.low <= 3.0 <= summary.high
    assert 1.0 <= summary.low and summary.high <= 5.0
    assert bootstrap_median([2.0, 2.0, 2.0]).format() == "2.00 [2.00, 2.00]"
    assert bootstrap_median([1.0, 2.0], seed=7) == bootstrap_median([1.0, 2.0], seed=7)  # reproducible


def test_negative_transfer_is_flagged() -> None:
    slow = [(0, 10.0), (10, 20.0), (20, 100.0), (30, 200.0), (40, 480.0)]
    fast = [(0, 10.0), (10, 480.0), (20, 500.0), (30, 500.0), (40, 500.0)]
    worse = strategy_metrics([seed_metrics(s, slow, fast, threshold=475, budget=40) for s in range(4)])
    assert worse.negative_transfer and worse.summary["speedup"].high < 1
    better = strategy_metrics([seed_metrics(s, fast, slow, threshold=475, budget=40) for s in range(4)])
    assert not better.negative_transfer and better.summary["speedup"].median == 4.0
    assert better.as_dict()["summary"]["speedup"]["median"] == 4.0


def test_both_at_threshold_from_the_start_is_no_speed_up() -> None:
    flat = [(0, 500.0), (10, 500.0)]
    assert seed_metrics(0, flat, flat, threshold=475, budget=10).speedup == 1.0


def test_evaluations_past_the_budget_do_not_count() -> None:
    late = [(0, 10.0), (10, 20.0), (12, 500.0)]  # SB3 finished a rollout past the budget of 10
    reach = time_to_threshold(late, 475, budget=10)
    assert reach.censored and reach.first == 10


def test_one_seed_gets_no_verdict() -> None:
    slow = [(0, 10.0), (10, 20.0), (20, 480.0)]
    fast = [(0, 10.0), (10, 480.0), (20, 500.0)]
    assert not strategy_metrics([seed_metrics(0, slow, fast, threshold=475, budget=20)]).negative_transfer


def test_a_higher_asymptote_without_reaching_the_threshold_is_a_verdict_of_its_own() -> None:
    from rltransfer.study.report import _rows

    scratch = [(0, 0.0), (10, 0.0), (20, 0.0), (30, 0.1)]
    transfer = [(0, 0.0), (10, 0.5), (20, 0.8), (30, 0.8)]  # better, yet below the 0.9 threshold
    metrics = strategy_metrics(
        [seed_metrics(s, transfer, scratch, threshold=0.9, budget=30) for s in range(4)]
    )
    assert metrics.summary["speedup"].median == 1.0 and not metrics.negative_transfer
    rows = _rows({"chain": metrics}, {})
    assert (
        rows[1][0] == "chain" and rows[1][-1] == "higher asymptote than scratch, larger area under the curve"
    )
