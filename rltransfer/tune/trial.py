"""One tuning trial, in whichever process an executor puts it: its seeds one after another, each evaluation
reported to Optuna, the trial stopped when the pruner says it cannot win.

The pruner sees the area under the curve so far (summed over the trial's seeds, per step of the total budget):
at the trial's last evaluation it equals the objective, the mean evaluation return over the budget averaged over
seeds, and at any earlier evaluation every trial has had the same schedule, so the values compare.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError
from rltransfer.core.interrupt import Interrupted
from rltransfer.core.io import write_json
from rltransfer.rl.training import train
from rltransfer.rl.transfer import transfer
from rltransfer.study.execute import RESULT, finished_result
from rltransfer.study.metrics import area_under_curve, time_to_threshold, within_budget
from rltransfer.tune.storage import make_pruner, open_storage


class _Reporter:
    """``on_evaluation`` of one seed's run: reports the trial's area so far and asks whether to prune."""

    def __init__(self, trial: Any, first_step: int, area_before: float, total: float, budget: int) -> None:
        self.trial, self.first_step, self.area_before = trial, first_step, area_before
        self.total, self.budget = total, budget
        self.pruned_at: int | None = None
        self.reported = 0

    def __call__(self, curve: list[dict[str, float]]) -> str | None:
        points = within_budget([(p["step"], p["mean_return"]) for p in curve], self.budget)
        if len(points) <= self.reported:
            return (
                None  # an evaluation past the budget (SB3 finishes its last rollout): not part of the score
            )
        self.reported = len(points)
        step = self.first_step + len(points) - 1
        self.trial.report((self.area_before + area_under_curve(points)) / self.total, step)
        if self.trial.should_prune():
            self.pruned_at = int(points[-1][0])
            return f"pruned by the tuner at step {self.pruned_at}"
        return None


def run_trial(config: dict[str, Any], run_dir: str, fingerprint: str) -> dict[str, Any]:
    """Run a trial's seeds (train or transfer, per its arm) and return its record; failures are returned."""
    path = Path(run_dir)
    stored = finished_result(path, fingerprint)
    if stored is not None:  # finished before the driver could record it (stopped in between)
        return stored
    shutil.rmtree(path, ignore_errors=True)  # an attempt that did not finish: the trial runs again whole
    started = time.perf_counter()
    seeds: list[int] = config["seeds"]
    budget: int = config["budget"]
    seed_results: dict[str, dict[str, Any]] = {}
    status = "finished"
    try:
        trial = _open_trial(config["trial"])
        area = 0.0
        for index, seed in enumerate(seeds):
            reporter = _Reporter(trial, index * config["evals_per_run"], area, budget * len(seeds), budget)
            run = {**config["run"], "seed": seed, "name": f"seed{seed}", "log_root": str(path)}
            if config["kind"] == "train":
                result = train(run, progress_bar=False, on_evaluation=reporter)
            else:
                run["source"] = config["source"]
                result = transfer(run, progress_bar=False, verbose=False, on_evaluation=reporter)
            curve = within_budget([(p["step"], p["mean_return"]) for p in result.curve], budget)
            area += area_under_curve(curve)
            seed_results[str(seed)] = {
                "curve": [list(point) for point in curve],
                "objective": area_under_curve(curve) / budget,
                "time_to_threshold": time_to_threshold(curve, config["threshold"], budget).first,
                "stop_reason": result.stop_reason,
            }
            if reporter.pruned_at is not None:
                status = "pruned"
                break
    except Interrupted as stop:  # the trial is run again, whole, when the search resumes
        return {"status": "interrupted", "signal": stop.signum, "seconds": _since(started)}
    except Exception as error:  # one failing trial must not take the search down
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "seconds": _since(started),
        }
    finished = [r for r in seed_results.values() if not r["stop_reason"].startswith("pruned")]
    record = {
        "status": status,
        "fingerprint": fingerprint,
        "value": sum(r["objective"] for r in seed_results.values()) / len(seeds)
        if status == "finished"
        else None,
        "time_to_threshold": (
            sum(r["time_to_threshold"] for r in finished) / len(finished) if status == "finished" else None
        ),
        "seeds": seed_results,
        "seconds": _since(started),
    }
    write_json(path / RESULT, record)
    return record


def _open_trial(spec: dict[str, Any]) -> Any:
    """The driver's trial, opened from its storage in this process."""
    import optuna

    storage = open_storage(spec["storage"], create=False)
    study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=make_pruner(spec["pruner"]))
    trial = optuna.trial.Trial(study, spec["id"])
    if trial.number != spec["number"]:
        raise ConfigError(f"the tuning storage {spec['storage']} holds another trial under id {spec['id']}")
    return trial


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)
