"""One run of a study, in whichever process an executor puts it: train or transfer, its result stored beside it.

Each run writes ``result.json`` into its run directory as soon as it ends, so re-running an interrupted study
skips what finished; a run that fails is recorded (``error.json``) without taking the study down; a run stopped
by a signal leaves its checkpoint and ``interrupted.json``, and the next attempt continues from it.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
import traceback
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from rltransfer.core.config import load_config, parse_config
from rltransfer.core.errors import ConfigError, RLTransferError
from rltransfer.core.interrupt import Interrupted
from rltransfer.core.io import write_json
from rltransfer.core.record import RunRecord
from rltransfer.rl.config import TrainConfig, TransferConfig
from rltransfer.rl.training import RunResult, train
from rltransfer.rl.transfer import transfer

RESULT = "result.json"
INTERRUPTED = "interrupted.json"  # left by an interrupted study run: which run its checkpoint belongs to


def finished_result(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stored result of a finished run with this exact config, else None."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("status") != "finished" or result.get("fingerprint") != fingerprint:
        return None
    return result


def finished_elsewise(run_dir: Path) -> bool:
    """The run directory holds a finished run (of whatever settings): never deleted, only moved aside."""
    try:
        return json.loads((run_dir / RESULT).read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


_STOPPED_WORKER: list[int] = []
"""In a pool worker: the signal that stopped one of its runs. The pool hands a worker runs it had queued before
the study stopped, which cancelling cannot withdraw; they must not start (each run's signal handling ends with
the run, so nothing else would stop them)."""


def _in_pool_worker() -> bool:
    return multiprocessing.current_process().name != "MainProcess"


def execute_run(kind: str, config: dict[str, Any], run_dir: str, fingerprint: str) -> dict[str, Any]:
    """Run one study run (in a worker process) and store its result beside it; failures are returned, not raised.

    A run that an earlier attempt left interrupted, with a checkpoint of this same run (config and source, by
    fingerprint), continues from it; any other leftover is cleared and the run starts afresh. In a pool worker
    that a signal has stopped once, no further run starts: its record says so and its directory is untouched.

    A `kind` of the form ``module:function`` runs that function instead, as ``function(config, run_dir,
    fingerprint)`` returning a record of the same shape (a tuning trial: several seeds, with pruning)."""
    if _STOPPED_WORKER:
        return {"status": "interrupted", "signal": _STOPPED_WORKER[0], "seconds": 0.0, "started": False}
    record = _execute(kind, config, run_dir, fingerprint)
    if record.get("status") == "interrupted" and _in_pool_worker():
        _STOPPED_WORKER.append(int(record["signal"]))
    return record


def _execute(kind: str, config: dict[str, Any], run_dir: str, fingerprint: str) -> dict[str, Any]:
    if _in_pool_worker():
        torch.set_num_threads(1)  # one thread per worker; runs in the caller's process keep its setting
    if ":" in kind:
        module, _, function = kind.partition(":")
        return getattr(import_module(module), function)(config, run_dir, fingerprint)
    path = Path(run_dir)
    parsed = parse_config(config, TrainConfig if kind == "train" else TransferConfig)
    started = time.perf_counter()
    try:
        try:
            result = _run(kind, parsed, path, resume=resumable(path, fingerprint, parsed))
        except ConfigError:
            if not resumable(path, fingerprint, parsed):
                raise
            # the checkpoint cannot be used (damaged, or the run had in fact finished): start this run afresh
            result = _run(kind, parsed, path, resume=False)
    except Interrupted as stop:  # Ctrl-C / SIGTERM: the run saved a checkpoint; the next attempt continues it
        write_json(path / INTERRUPTED, {"fingerprint": fingerprint, "signal": stop.signum})
        return {
            "status": "interrupted",
            "signal": stop.signum,
            "seconds": round(time.perf_counter() - started, 2),
        }
    except Exception as error:  # one failing run must not take the study down
        record = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "fingerprint": fingerprint,
            "seconds": round(time.perf_counter() - started, 2),
        }
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "error.json", record)
        return record
    record = {
        "status": "finished",
        "fingerprint": fingerprint,
        "curve": [[point["step"], point["mean_return"]] for point in result.curve],
        "best_mean_return": result.best_mean_return,
        "timesteps": result.timesteps,
        "seconds": round(result.seconds, 2),
        "frozen_unchanged": getattr(result, "frozen_unchanged", None),
    }
    (path / INTERRUPTED).unlink(missing_ok=True)
    write_json(path / RESULT, record)
    return record


def _run(kind: str, config: TrainConfig | TransferConfig, path: Path, resume: bool) -> RunResult:
    if not resume:
        if not finished_elsewise(path):  # a finished run of other settings is moved aside when the run starts
            shutil.rmtree(path, ignore_errors=True)  # an unfinished attempt without a usable checkpoint
        if kind == "train":
            return train(config, progress_bar=False)
        return transfer(config, progress_bar=False, verbose=False)
    if kind == "train":
        return train(progress_bar=False, resume=path)
    assert isinstance(config, TransferConfig)
    # the study's source as it lies now: the saved config may name where it lay when the run started
    return transfer(progress_bar=False, verbose=False, resume=path, source=config.source)


def resumable(path: Path, fingerprint: str, config: TrainConfig | TransferConfig | None = None) -> bool:
    """True when the run directory holds a checkpoint that an interrupted attempt of this same run (same config
    and source: the fingerprint) left behind. A run killed outright (SIGKILL, a crash) leaves no marker: with
    `config`, its checkpoint counts when the run's saved config is this one (where its files lie aside)."""
    if not RunRecord(path).has_checkpoint():
        return False
    try:
        marker = json.loads((path / INTERRUPTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return config is not None and _same_run(path, config)
    return isinstance(marker, dict) and marker.get("fingerprint") == fingerprint


def _same_run(path: Path, config: TrainConfig | TransferConfig) -> bool:
    """The run in `path` was started with `config` (paths aside: the study directory may have moved; a transfer
    checks its source's digest itself when it resumes) and was still running when it was stopped."""
    try:
        if RunRecord.read(path).get("status") != "running":
            return False
        saved = load_config(path / "config.yaml", type(config))
    except (OSError, ValueError, RLTransferError):
        return False
    ignore = {"log_root", "source"}
    return saved.model_dump(mode="json", exclude=ignore) == config.model_dump(mode="json", exclude=ignore)
