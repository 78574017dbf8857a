"""Ctrl-C and SIGTERM as a request to stop cleanly: long loops poll :func:`stop_requested`, save a checkpoint and
raise :class:`Interrupted`; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from rltransfer.core.errors import RLTransferError

_requested: list[int] = []
_depth: list[int] = [0]  # nested stop_on_signals blocks share one request (a study running a training)
_resumable: list[tuple[Path, str]] = []  # the outermost block's (directory, command): what a hint resumes


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C: stopped without a new checkpoint; the message says what can still be resumed."""

    def __init__(self, resume: tuple[Path, str] | None) -> None:
        if resume is None:
            text = "Stopped at once by a second Ctrl-C, without saving a checkpoint."
        else:
            folder, command = resume
            text = (
                f"Stopped at once by a second Ctrl-C, without saving a new checkpoint. What was saved before it "
                f"(finished runs, the last periodic checkpoint) is in {folder}; continue with: "
                f"rltransfer {command} --resume {folder}"
            )
        super().__init__(text)


class Interrupted(RLTransferError):
    """Training stopped on a signal after saving a checkpoint; ``--resume RUN_DIR`` continues it."""

    def __init__(self, signum: int, run_dir: Path | str, command: str, detail: str = "") -> None:
        self.signum = signum
        self.run_dir = Path(run_dir)
        name = signal.Signals(signum).name
        super().__init__(
            f"Stopped by {name}{detail}; a checkpoint is saved in {self.run_dir}. Continue with: "
            f"rltransfer {command} --resume {self.run_dir}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_requested() -> int | None:
    """The signal number that asked training to stop, or None."""
    return _requested[0] if _requested else None


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running loop to stop at its next check (what the signal handlers do; tests call it directly)."""
    if not _requested:
        _requested.append(signum)


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _requested and signum == signal.SIGINT:
        raise StoppedAtOnce(_resumable[0] if _resumable else None)  # stop now, without a checkpoint
    request_stop(signum)


@contextmanager
def stop_on_signals(resume: tuple[Path, str] | None = None) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM request a clean stop instead of killing the process. ``resume``
    (directory, command) is what a second, immediate Ctrl-C tells the user to resume (the outermost block's)."""
    outermost = _depth[0] == 0
    previous = {}
    if outermost:
        _requested.clear()
        _resumable.clear()
        if resume is not None:
            _resumable.append((Path(resume[0]), resume[1]))
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, _handler)
        except ValueError:  # not the main thread: signals cannot be caught here, loops still poll the flag
            pass
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if outermost:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _requested.clear()
            _resumable.clear()
