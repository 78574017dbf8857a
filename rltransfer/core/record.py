"""A run directory and its record: ``run.json`` (what happened) and the names of the files beside it.

A run directory ``<log_root>/<name>/`` holds ``config.yaml`` (resolved), ``run.json`` (kind, status, versions,
the command, results), ``best_model.zip`` (the run's result: best by evaluation), ``last_model.zip`` (where
training ended), ``evaluations.json`` (the evaluation curve), ``checkpoint/`` while it can be resumed,
``progress.csv`` and the TensorBoard events. :class:`RunRecord` is the one place that reads and writes
``run.json``; every write replaces the file whole.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError
from rltransfer.core.io import LOCK, write_json

RECORD = "run.json"
CONFIG = "config.yaml"
BEST_MODEL = "best_model.zip"
LAST_MODEL = "last_model.zip"
EVALUATIONS = "evaluations.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class RunRecord:
    """The record of one run directory; :meth:`update` changes it and writes ``run.json`` atomically."""

    run_dir: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run_dir / RECORD

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG

    @property
    def best_model(self) -> Path:
        return self.run_dir / BEST_MODEL

    @property
    def last_model(self) -> Path:
        return self.run_dir / LAST_MODEL

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "state.json").is_file()

    def update(self, **values: Any) -> None:
        """Record `values` (on top of what is there) and write ``run.json``."""
        self.data.update(values)
        write_json(self.path, self.data)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        """The record as it is on disk; empty when the file is missing or damaged."""
        run_dir = Path(run_dir)
        try:
            data = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        return cls(run_dir, data if isinstance(data, dict) else {})

    @classmethod
    def resumable(cls, run_dir: str | Path, kind: str) -> RunRecord:
        """The record of an interrupted run of `kind`, with clear errors for anything that cannot resume."""
        run_dir = Path(run_dir)
        try:
            data = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
        except OSError:
            if run_dir.is_dir() and not any(
                p.name not in (".lock", "config.yaml") for p in run_dir.iterdir()
            ):
                raise ConfigError(
                    f"{run_dir} holds no {RECORD}: the run was stopped before it began, so there is nothing to "
                    "resume. Start it again with its config (this folder is moved aside)."
                ) from None
            raise ConfigError(
                f"{run_dir} is not an rltransfer run directory (no {RECORD}). Give the run's folder."
            ) from None
        except ValueError as error:
            raise ConfigError(f"{run_dir / RECORD} is truncated or damaged ({error}).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{run_dir / RECORD} is damaged (not a JSON object).")
        if data.get("kind") != kind:
            raise ConfigError(
                f"{run_dir} is a `{data.get('kind')}` run; resume it with `rltransfer {data.get('kind')} --resume`."
            )
        if data.get("status") == "finished":
            raise ConfigError(f"{run_dir} already finished; there is nothing to resume.")
        return cls(run_dir, data)


def restart_if_never_checkpointed(run_dir: Path) -> bool:
    """A run resumed before it saved its first checkpoint has nothing to continue from: empty its directory
    (its config stays) so it starts again from step 0, and say so. True when it restarts."""
    record = RunRecord(run_dir)
    if record.has_checkpoint():
        return False
    for path in run_dir.iterdir():
        if path.name in (LOCK, "config.yaml"):
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    print(
        f"{run_dir} stopped before its first checkpoint: starting it again from step 0 with its saved config.",
        file=sys.stderr,
        flush=True,
    )
    return True
