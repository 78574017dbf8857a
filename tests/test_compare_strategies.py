"""benchmarks/compare_strategies.py: two strategies of a study paired seed by seed, Holm over three metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_strategies  # noqa: E402


def _row(seed: int, time: float, auc: float, asymptotic: float) -> dict:
    return {"seed": seed, "time_to_threshold": time, "auc": auc, "asymptotic": asymptotic}


def _report(tmp_path: Path, method: list[dict], baseline: list[dict]) -> Path:
    study = tmp_path / "study"
    study.mkdir()
    report = {"metrics": {"T": {"m": {"per_seed": method}, "b": {"per_seed": baseline}}}}
    (study / "report.json").write_text(json.dumps(report))
    return study


def test_a_method_better_on_every_seed_is_called_so(tmp_path: Path, capsys) -> None:
    method = [_row(s, 5000, 2e6 + s, 500) for s in range(8)]
    baseline = [_row(s, 10000 + 100 * s, 1e6, 500) for s in range(8)]
    out = tmp_path / "out.json"
    assert (
        compare_strategies.main([str(_report(tmp_path, method, baseline)), "m", "b", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())["targets"]["T"]
    assert result["verdict"] == "faster to the threshold, larger area under the curve"
    assert (
        result["tests"]["speed"]["pvalue"] == 2 / 256 and result["tests"]["speed"]["adjusted"] == 2 / 256 * 3
    )
    assert result["tests"]["asymptote"]["pvalue"] == 1.0
    assert "verdict: faster to the threshold" in capsys.readouterr().out


def test_mixed_signs_or_too_few_seeds_are_no_clear_difference(tmp_path: Path) -> None:
    method = [_row(s, 5000 if s % 2 else 15000, 1e6, 500) for s in range(8)]
    baseline = [_row(s, 10000, 1e6, 500) for s in range(8)]
    result = compare_strategies.compare(
        json.loads((_report(tmp_path, method, baseline) / "report.json").read_text()), "m", "b"
    )
    assert result["T"]["verdict"] == "no clear difference"
    # 5 seeds, all better: p = 2/32 = 0.0625 can never be significant
    few = compare_strategies.compare(
        {
            "metrics": {
                "T": {
                    "m": {"per_seed": method[:5]},
                    "b": {"per_seed": [_row(s, 1e9, 1e6, 500) for s in range(5)]},
                }
            }
        },
        "m",
        "b",
    )
    assert few["T"]["tests"]["speed"]["pvalue"] == 2 / 32 and few["T"]["verdict"] == "no clear difference"


def test_an_unknown_strategy_or_study_is_named(tmp_path: Path, capsys) -> None:
    study = _report(tmp_path, [_row(0, 1, 1, 1)], [_row(0, 1, 1, 1)])
    assert compare_strategies.main([str(study), "m", "nope"]) == 2
    assert "its strategies are: b, m" in capsys.readouterr().err
    assert compare_strategies.main([str(tmp_path / "missing"), "m", "b"]) == 2
    assert "report.json does not exist" in capsys.readouterr().err
