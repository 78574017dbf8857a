"""Files written whole or not at all (temporary name, then rename), run directories and version records."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rltransfer.core.errors import ConfigError, StorageError

try:
    import fcntl
except ImportError:  # (Windows: no advisory locks; run directories are then not locked)
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0)
os.umask(_UMASK)
LOCK = ".lock"
_held: dict[Path, int] = {}  # run directories this process holds the lock of: resolved path -> descriptor


WRITE_FAULTS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EISDIR,
}
"""The errors of a folder that cannot be written (full, read-only, not ours, a file where a folder should be)."""


def cannot_write(path: Path, error: OSError) -> StorageError:
    """The one-paragraph error for a file or folder that could not be written."""
    reason = error.strerror or type(error).__name__
    return StorageError(
        f"Cannot write {path}: {reason}. Check that {path.parent} is a writable folder (not a file) with free "
        "space; a run stopped this way keeps its last checkpoint and continues with --resume."
    )


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on failure it is removed.
    A failure to write (also inside the caller's block) is a :class:`StorageError` naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the final file the usual mode
    except OSError as error:
        raise cannot_write(path, error) from None
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
    except StorageError:
        raise
    except OSError as error:
        raise cannot_write(path, error) from None
    except RuntimeError as error:
        # torch.save reports a failed write (a full disk) as a RuntimeError of its zip writer
        if not any(mark in str(error) for mark in ("PytorchStreamWriter", "unexpected pos", "write failed")):
            raise
        raise cannot_write(
            path, OSError(errno.ENOSPC, "the file could not be written (is the disk full?)")
        ) from None
    finally:
        with suppress(OSError):
            tmp_path.unlink(missing_ok=True)


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


def lock_run_dir(run_dir: Path) -> None:
    """Hold an OS lock on a run directory (``.lock`` inside it) until :func:`release_run_dir` or the end of this
    process, however it ends: another process that wants the same directory is refused instead of mixing files."""
    key = run_dir.resolve()
    if fcntl is None or key in _held or not run_dir.is_dir():
        return
    try:
        descriptor = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as error:
        raise cannot_write(run_dir / LOCK, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise ConfigError(
            f"The run directory {run_dir} is in use by another rltransfer process that is still running. Wait "
            "for it to end, or give this run another name (--name, or `name` in the config)."
        ) from None
    _held[key] = descriptor


def release_run_dir(run_dir: Path) -> None:
    """Give up this process's lock on a run directory (nothing happens when it holds none)."""
    descriptor = _held.pop(run_dir.resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def _in_use(run_dir: Path) -> bool:
    """True when another process holds the run directory's lock."""
    if fcntl is None or run_dir.resolve() in _held or not (run_dir / LOCK).is_file():
        return False
    descriptor = os.open(run_dir / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)  # (closing also drops the lock this check may have taken)
    return False


_MARKERS = {"run.json": "a run", "study.yaml": "a study", "tune.yaml": "a tuning"}
"""The file that each kind of rltransfer folder holds."""


def refuse_foreign_dir(folder: Path, marker: str, kind: str) -> None:
    """A study or tuning writes only into a folder of its own (one holding `marker`, its saved config) or a new
    one; the folder of another run, study or tuning of the same name is never touched."""
    if not folder.is_dir() or (folder / marker).is_file():
        return
    for other, what in _MARKERS.items():
        if (folder / other).is_file():
            raise ConfigError(
                f"{folder} is the folder of {what} (it holds {other}), not of a {kind}; the {kind} leaves it "
                f"alone. Give the {kind} another `name` (--name) or `log_root`."
            )


def prepare_run_dir(log_root: str | Path, name: str) -> Path:
    """Create ``log_root/name`` and lock it for this process; an earlier run of that name is moved aside to
    ``name.<its time>``, not deleted, and a run of that name still in progress elsewhere is refused."""
    run_dir = Path(log_root) / name
    try:
        return _make_run_dir(run_dir, name)
    except OSError as error:
        if isinstance(error, StorageError):
            raise
        raise cannot_write(Path(error.filename or run_dir), error) from None


def _make_run_dir(run_dir: Path, name: str) -> Path:
    if run_dir.exists() and not run_dir.is_dir():
        raise StorageError(
            f"{run_dir} is a file, where the run directory `{name}` would go: move the file, or give the run "
            "another name."
        )
    if _in_use(run_dir):
        lock_run_dir(run_dir)  # raises the error that explains it
    release_run_dir(run_dir)  # (this process's own earlier run of that name is over)
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
    lock_run_dir(run_dir)
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
