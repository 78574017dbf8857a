"""Where tensors live: ``auto`` picks CUDA when a GPU is visible, else the CPU."""

from __future__ import annotations

import torch

from rltransfer.core.errors import ConfigError


def resolve_device(device: str = "auto") -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; explicit devices are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"`device` is {device!r} but no CUDA GPU is visible here; use `device: auto` or `cpu`."
        )
    return device
