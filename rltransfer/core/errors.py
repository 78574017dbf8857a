"""The exceptions rltransfer raises for bad input: one paragraph that says what, where and how to fix it."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any


class RLTransferError(Exception):
    """Base class of every error caused by the user's input; the CLI prints it without a traceback."""


class ConfigError(RLTransferError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, value out of range)."""


class LayerSelectionError(RLTransferError, KeyError):
    """A layer name or pattern does not match any layer of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TransferError(RLTransferError):
    """A source agent cannot be loaded or mapped onto the target."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean `x`?)' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def short_list(names: Iterable[str], limit: int = 40) -> str:
    """Join names for an error message, cut after `limit` entries."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 80, 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 6


def shown(value: Any, limit: int = 200) -> str:
    """`value` quoted for an error message, cut to about `limit` characters (a huge value stays one line)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def unpickler_reason(error: Exception) -> str:
    """What PyTorch's weights-only loader objected to, without its advice to load the file unsafely (with
    ``weights_only=False`` or an allowlist), which would run code from the file."""
    lines = str(error).splitlines()
    for line in lines:
        if "WeightsUnpickler error" in line:
            reason = line.split("WeightsUnpickler error:", 1)[-1].split(". Please use", 1)[0].strip()
            return reason or "not a PyTorch weights file"
    for line in lines:  # e.g. "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
        if "unsupported" in line.lower() and "weights_only" not in line:
            return line.strip().rstrip(".")
    first = lines[0].strip() if lines else ""
    return first if first and "weights_only" not in first else type(error).__name__


class StorageError(RLTransferError, OSError):
    """A file or folder could not be written (a read-only folder, a file where a folder should be, a full disk)."""


class NumericalError(RLTransferError):
    """A loss or parameter became NaN or infinite; training stopped and the last good checkpoint was kept."""
