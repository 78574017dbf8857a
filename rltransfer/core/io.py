"""Files written whole or not at all (temporary name, then rename), run directories and version records."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the final file the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        descriptor = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(
                descriptor
            )  # on disk before it takes the real name, so a power cut cannot tear it either
        finally:
            os.close(descriptor)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def prepare_run_dir(log_root: str | Path, name: str) -> Path:
    """Create ``log_root/name``; an earlier run of that name is moved aside to ``name.<its time>``, not deleted."""
    run_dir = Path(log_root) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run_dir.stat().st_mtime))
        aside = run_dir.with_name(f"{name}.{stamp}")
        counter = 1
        while aside.exists():
            counter += 1
            aside = run_dir.with_name(f"{name}.{stamp}-{counter}")
        shutil.move(str(run_dir), str(aside))
        print(f"An earlier run {run_dir} was moved to {aside}.", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on, for the run's record."""
    found = {"python": platform.python_version()}
    for package in ("rltransfer", "torch", "stable-baselines3", "gymnasium", "numpy", "tensorboard"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
