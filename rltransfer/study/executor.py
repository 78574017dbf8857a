"""The executor seam: planning hands over run specifications, an executor runs them and hands back each run's
record as it ends. :class:`LocalExecutor` (a process pool on this machine) is the default; another backend (a
cluster) is another class with the same :meth:`Executor.run`, and planning and reporting stay as they are."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from rltransfer.core.interrupt import stop_requested
from rltransfer.study.execute import execute_run
from rltransfer.study.plan import RunSpec

OnRecord = Callable[[RunSpec, dict[str, Any]], None]


class Executor(Protocol):
    """Runs a study's runs and reports each one's record (``status`` finished, failed or interrupted)."""

    def run(self, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        """Run every spec, calling `on_record` as each ends. When a stop is requested (Ctrl-C, SIGTERM) queued
        runs are dropped, running ones save a checkpoint, and the signal number is returned; else None."""
        ...


@dataclass
class LocalExecutor:
    """Runs on this machine: in this process for one worker, else in a pool of spawned processes (one torch
    thread each)."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def description(self) -> str:
        return f"with {self.workers} workers"

    @property
    def slots(self) -> int:
        """Runs that go at once."""
        return max(1, self.workers)

    def run(self, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        if self.workers <= 1 or len(specs) <= 1:
            return self._in_process(specs, on_record)
        return self._in_pool(specs, on_record)

    def _in_process(self, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        for spec in specs:
            record = execute_run(spec.kind, spec.config, str(spec.run_dir), spec.fingerprint)
            on_record(spec, record)
            signum = stop_requested() or (record["signal"] if record["status"] == "interrupted" else None)
            if signum is not None:
                return signum
        return None

    def _in_pool(self, specs: Sequence[RunSpec], on_record: OnRecord) -> int | None:
        before = set(multiprocessing.active_children())
        workers: list[multiprocessing.process.BaseProcess] = []
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(specs)), mp_context=multiprocessing.get_context("spawn")
        )
        try:
            futures = {
                pool.submit(execute_run, spec.kind, spec.config, str(spec.run_dir), spec.fingerprint): spec
                for spec in specs
            }
            workers = [p for p in multiprocessing.active_children() if p not in before]
            waiting: set[Future] = set(futures)
            while waiting:
                finished_now, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    on_record(futures[future], _record_of(future))
                signum = stop_requested()
                if signum is not None:
                    # queued runs are dropped; running ones get SIGTERM, save a checkpoint and stop
                    pool.shutdown(wait=False, cancel_futures=True)
                    _end(workers, terminate=True)
                    return signum
        except BaseException:
            # a second Ctrl-C or another error: stop the workers now; finished runs' results are stored already
            pool.shutdown(wait=False, cancel_futures=True)
            _end(workers, terminate=False)
            raise
        pool.shutdown(wait=True)
        return None


def _record_of(future: Future) -> dict[str, Any]:
    try:
        return future.result()
    except BrokenProcessPool as error:
        return {"status": "failed", "error": f"worker process died ({error})", "seconds": 0.0}
    except Exception as error:  # e.g. a result that could not be sent back
        return {"status": "failed", "error": f"{type(error).__name__}: {error}", "seconds": 0.0}


def _end(processes: list[multiprocessing.process.BaseProcess], *, terminate: bool) -> None:
    """SIGTERM (each run saves a checkpoint, then the worker exits) or, when `terminate` is False, SIGKILL."""
    for process in processes:
        if process.is_alive():
            process.terminate() if terminate else process.kill()
    if terminate:
        for process in processes:
            process.join(timeout=60)
