"""rltransfer: train a source agent, transfer it to similar games, and measure whether it paid.

The freeze / replace-head core works on any ``torch.nn.Module``; the RL layer stands on Stable-Baselines3 and
gymnasium, image transfer (``run_image``) on torchvision. Importing rltransfer registers its game families (``rltransfer/CartPoleLongPole-v1``...) with gymnasium;
the SB3-based parts load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rltransfer import envs  # noqa: F401  (registers the game families with gymnasium)
from rltransfer.errors import ConfigError, LayerSelectionError, RLTransferError, TransferError
from rltransfer.heads import find_head, replace_head
from rltransfer.layers import (
    LayerInfo,
    count_parameters,
    format_layers,
    freeze,
    frozen_layers,
    layer_names,
    list_layers,
    select_layers,
    unfreeze,
)
from rltransfer.optim import build_optimizer, trainable_parameters

__version__ = "0.1.0"

_LAZY = {
    "train": "rltransfer.training",
    "RunResult": "rltransfer.training",
    "transfer": "rltransfer.transfers",
    "TransferResult": "rltransfer.transfers",
    "load_source": "rltransfer.transfers",
    "map_weights": "rltransfer.transfers",
    "LayerMapping": "rltransfer.transfers",
    "freeze_agent": "rltransfer.sb3",
    "rebuild_optimizers": "rltransfer.sb3",
    "load_config": "rltransfer.config",
    "TrainConfig": "rltransfer.config",
    "TransferConfig": "rltransfer.config",
    "build_agent": "rltransfer.agents",
    "run_study": "rltransfer.study",
    "StudyConfig": "rltransfer.config",
    "unfreeze_agent": "rltransfer.sb3",
    "run_image": "rltransfer.vision",
    "ImageConfig": "rltransfer.vision",
    "ImageResult": "rltransfer.vision",
    "predict": "rltransfer.vision",
    "build_classifier": "rltransfer.vision",
    "load_classifier": "rltransfer.vision",
    "set_classes": "rltransfer.vision",
    "ModelSpec": "rltransfer.vision",
}

__all__ = [
    "ConfigError",
    "LayerInfo",
    "LayerSelectionError",
    "RLTransferError",
    "TransferError",
    "build_optimizer",
    "count_parameters",
    "find_head",
    "format_layers",
    "freeze",
    "frozen_layers",
    "layer_names",
    "list_layers",
    "replace_head",
    "select_layers",
    "trainable_parameters",
    "unfreeze",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rltransfer' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
