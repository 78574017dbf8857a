"""``rltransfer study``: plan the runs, train the source, hand the pending runs to an executor, write the report.

Every run of a study gets the same budget and evaluation schedule (no early stopping). Study directory
``<log_root>/<name>/``: ``source/`` (when the study trains its source), ``runs/<target>/<strategy>/seed<k>/`` (one
run directory each), ``study.yaml``, ``report.md``, ``report.json``, ``curves.png`` and ``summary/`` (TensorBoard).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rltransfer.core.config import coerce_config, dump_config
from rltransfer.core.errors import TransferError
from rltransfer.core.interrupt import Interrupted, stop_on_signals
from rltransfer.core.io import refuse_foreign_dir, write_text
from rltransfer.rl.config import TrainConfig
from rltransfer.study.config import StudyConfig
from rltransfer.study.execute import execute_run, finished_elsewise, finished_result
from rltransfer.study.executor import Executor, LocalExecutor
from rltransfer.study.plan import RunSpec, StudyPlan, config_fingerprint, plan_study
from rltransfer.study.report import StudyReport, build_report
from rltransfer.study.stats import seeds_needed
from rltransfer.study.verdict import TESTED

STUDY_CONFIG = "study.yaml"


def run_study(
    config: StudyConfig | str | Path | dict[str, Any],
    *,
    workers: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> StudyReport:
    """Run (or resume) a study and write its report. Runs go to `executor` (default: a local process pool
    of `workers` processes, one per CPU core)."""
    config = coerce_config(config, StudyConfig)
    plan = plan_study(config)
    refuse_foreign_dir(plan.study_dir, STUDY_CONFIG, "study")
    if executor is None:
        executor = make_executor(config, workers)
    check = getattr(executor, "check", None)
    if check is not None:
        check()  # e.g. a cluster without the GPUs asked for: refused before anything is written or trained
    try:
        return _run_plan(plan, executor, progress)
    finally:
        getattr(executor, "close", lambda: None)()


def _run_plan(plan: StudyPlan, executor: Executor, progress: bool) -> StudyReport:
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    write_text(plan.study_dir / STUDY_CONFIG, dump_config(plan.config))  # what --resume STUDY_DIR runs again
    _warn_if_too_few_seeds(plan)
    if plan.source_config is not None:
        _train_source(plan)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for spec in plan.runs:
        stored = finished_result(spec.run_dir, spec.fingerprint)
        if stored is not None:
            results[spec.key] = stored
        else:
            pending.append(spec)
    if results:
        print(f"Resuming: {len(results)} of {len(plan.runs)} runs already finished.", flush=True)
    stale = sum(1 for spec in pending if finished_elsewise(spec.run_dir))
    if stale:
        print(
            f"{stale} finished runs in {plan.study_dir} were made with other settings than this config: each is "
            "moved aside (to RUN.<time>, nothing is deleted) and run again.",
            file=sys.stderr,
            flush=True,
        )
    started = time.perf_counter()
    _execute(executor, pending, _Progress(results, len(plan.runs), progress), plan.study_dir)
    described = getattr(executor, "description", "")
    print(
        f"{len(pending)} runs in {time.perf_counter() - started:.0f} s{' ' * bool(described)}{described}.",
        flush=True,
    )
    return build_report(plan, results)


def make_executor(config: StudyConfig, workers: int | None = None) -> Executor:
    """The executor the study's ``execution`` section asks for (`workers` overrides the local pool's size)."""
    execution = config.execution
    if execution.backend == "ray":
        from rltransfer.study.ray_executor import RayExecutor

        return RayExecutor(
            execution.address, execution.cpus_per_run, execution.gpus_per_run, execution.retries
        )
    workers = workers or execution.workers
    return LocalExecutor(workers) if workers else LocalExecutor()


@dataclass
class _Progress:
    """Collects the records the executor hands back; with `show`, a progress bar over the runs (done/total,
    elapsed, ETA) and a line for each run as it ends."""

    results: dict[str, dict[str, Any]]
    total: int
    show: bool
    stopped: list[int] = field(default_factory=list)
    bar: Any = None

    def start(self) -> None:
        # a bar only on a terminal: in a log file its redraws would bury the per-run lines
        if self.show and sys.stdout.isatty() and self.total > len(self.results):
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=len(self.results), desc="runs", unit="run", dynamic_ncols=True,
                file=sys.stdout, bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, {remaining} left",
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, spec: RunSpec, record: dict[str, Any]) -> None:
        if record["status"] == "interrupted":
            self.stopped.append(record["signal"])  # its checkpoint is in its run directory; the study stops
            return
        self.results[spec.key] = record
        if not self.show:
            return
        if record["status"] == "finished":
            line = f"final return {record['curve'][-1][1]:.1f}, best {record['best_mean_return']:.1f}"
        else:
            line = f"FAILED: {record['error']}"
        text = f"[{len(self.results)}/{self.total}] {spec.key}: {line} ({record['seconds']:.0f} s)"
        if self.bar is None:
            print(text, flush=True)
            return
        self.bar.write(text, file=sys.stdout)
        self.bar.update(1)


def _execute(executor: Executor, pending: list[RunSpec], progress: _Progress, study_dir: Path) -> None:
    progress.start()
    try:
        with stop_on_signals(resume=(study_dir, "study")):
            signum = executor.run(pending, progress) if pending else None
    finally:
        progress.close()
    signum = signum if signum is not None else (progress.stopped[0] if progress.stopped else None)
    if signum is not None:
        finished = sum(1 for record in progress.results.values() if record["status"] == "finished")
        raise Interrupted(
            signum,
            study_dir,
            "study",
            f" ({finished} of {progress.total} runs finished; runs in progress saved checkpoints)",
        )
    if any(
        str(record.get("error", "")).startswith("worker process died") for record in progress.results.values()
    ):
        print(
            "A worker process died. If you started the study from a Python script, guard the call with "
            '`if __name__ == "__main__":` (workers are started with the spawn method, which re-imports the script).',
            file=sys.stderr,
        )
    sys.stdout.flush()


def _warn_if_too_few_seeds(plan: StudyPlan) -> None:
    """Say before any run starts when the seeds cannot support a verdict, and how many would."""
    tests = len(TESTED) * sum(1 for name in plan.strategies if name != "scratch")
    seeds = len(plan.config.seed_list())
    needed = seeds_needed(tests)
    if tests and seeds < needed:
        print(
            f"Note: {seeds} seeds cannot show a difference at 5% with {tests} tests (3 per strategy); the report "
            f"will give numbers but no verdict. Use at least {needed} seeds (--seeds {needed}) for one.",
            file=sys.stderr,
            flush=True,
        )


def _train_source(plan: StudyPlan) -> Path:
    assert plan.source_config is not None
    return train_source(plan.source_config, plan.study_dir / "source", plan.study_dir, "study")


def train_source(config: TrainConfig, run_dir: Path, home: Path, command: str) -> Path:
    """Train a study's (or a tuning's) source once into `run_dir`; a finished source with the same config is
    reused. An interrupt names `home` as what ``rltransfer COMMAND --resume`` continues."""
    fingerprint = config_fingerprint(config)
    if finished_result(run_dir, fingerprint) is not None and (run_dir / "best_model.zip").exists():
        print(f"Source: reusing {run_dir}", flush=True)
        return run_dir
    print(f"Source: training {config.env.id} into {run_dir}", flush=True)
    with stop_on_signals(resume=(home, command)):
        record = execute_run("train", config.model_dump(mode="json"), str(run_dir), fingerprint)
    if record["status"] == "interrupted":
        raise Interrupted(record["signal"], home, command, " while training the source")
    if record["status"] != "finished":
        raise TransferError(
            f"The {command}'s source failed to train: {record['error']}. See {run_dir / 'error.json'}."
        )
    return run_dir
