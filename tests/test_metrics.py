"""Transfer metrics on hand-made curves with known answers."""

from __future__ import annotations

import math

import pytest

from rltransfer.study.metrics import (
    area_under_curve,
    asymptotic_return,
    seed_metrics,
    strategy_metrics,
    summarise,
    time_to_threshold,
)
from rltransfer.study.verdict import target_verdicts

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


def test_median_interval_from_order_statistics() -> None:
    summary = summarise([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert summary.median == 5.5 and (summary.low, summary.high) == (2.0, 9.0)  # ranks 2 and 9 of 10
    assert summary.coverage >= 0.95 and not summary.indicative
    few = summarise([1.0, 2.0, 3.0])
    assert (few.low, few.high) == (1.0, 3.0) and few.coverage == 0.75 and few.indicative  # the range, 75%
    assert summarise([2.0, 2.0, 2.0]).format() == "2.00 [2.00, 2.00]"
    assert summarise([1.0, math.nan, 3.0]).n == 2


SLOW = [(0, 10.0), (10, 20.0), (20, 100.0), (30, 200.0), (40, 480.0)]
FAST = [(0, 10.0), (10, 480.0), (20, 500.0), (30, 500.0), (40, 500.0)]


def test_negative_transfer_is_flagged_when_the_paired_test_holds() -> None:
    worse = strategy_metrics([seed_metrics(s, SLOW, FAST, threshold=475, budget=40) for s in range(8)])
    verdict = target_verdicts({"worse": worse.per_seed})["worse"]
    assert verdict.negative_transfer and verdict.text.startswith("NEGATIVE TRANSFER (slower to the threshold")
    assert worse.summary["speedup"].high < 1
    better = strategy_metrics([seed_metrics(s, FAST, SLOW, threshold=475, budget=40) for s in range(8)])
    verdict = target_verdicts({"better": better.per_seed})["better"]
    assert not verdict.negative_transfer and "faster than scratch" in verdict.text
    assert better.as_dict()["summary"]["speedup"]["median"] == 4.0
    assert verdict.as_dict()["tests"][0]["pvalue"] == 2 / 2**8


def test_too_few_seeds_say_how_many_are_needed() -> None:
    worse = strategy_metrics([seed_metrics(s, SLOW, FAST, threshold=475, budget=40) for s in range(4)])
    verdict = target_verdicts({"worse": worse.per_seed})["worse"]
    assert not verdict.negative_transfer
    assert verdict.text == "4 seeds cannot show a difference at 5% (3 tests): use at least 7 seeds"


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
    metrics = strategy_metrics([seed_metrics(0, slow, fast, threshold=475, budget=20)])
    verdict = target_verdicts({"one": metrics.per_seed})["one"]
    assert not verdict.negative_transfer and verdict.text.startswith("1 seed cannot show")


def test_a_higher_asymptote_without_reaching_the_threshold_is_a_verdict_of_its_own() -> None:
    from rltransfer.study.report import _rows

    scratch = [(0, 0.0), (10, 0.0), (20, 0.0), (30, 0.1)]
    transfer = [(0, 0.0), (10, 0.5), (20, 0.8), (30, 0.8)]  # better, yet below the 0.9 threshold
    metrics = strategy_metrics(
        [seed_metrics(s, transfer, scratch, threshold=0.9, budget=30) for s in range(8)]
    )
    verdicts = target_verdicts({"chain": metrics.per_seed})
    assert metrics.summary["speedup"].median == 1.0 and not verdicts["chain"].negative_transfer
    rows = _rows({"chain": metrics}, verdicts, {})
    assert (
        rows[1][0] == "chain" and rows[1][-1] == "higher asymptote than scratch, larger area under the curve"
    )


def test_terminal_tables_fit_100_columns_and_lose_no_word() -> None:
    from rltransfer.core.tables import text_table

    rows = [
        ["strategy", "jumpstart", "asymptotic gain", "transfer ratio", "time to threshold", "speed-up", "stable"],
        ["scratch (baseline)", "-", "asymptote 500.0 [500.0, 500.0]", "-", "17,500 [15,000, 20,000]", "1", "1"],
        ["tuned-transfer", "-52.8 [-88.9, 1.2]", "0.0 [0.0, 0.0]", "-0.05 [-0.20, 0.00]", "20,000 (2/2 never)", "0.88", "0.75"],
    ]  # fmt: skip
    text = text_table(rows, "LongPole (threshold 475; median [interval covering it with >= 95% probability])")
    assert max(len(line) for line in text.splitlines()) <= 100
    words = text.split()
    for row in rows:
        for cell in row:
            assert all(word in words for word in cell.split()), cell  # wrapped at spaces, never cut
    assert "[interval" in text  # brackets are text, not rich markup
