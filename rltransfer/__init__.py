"""rltransfer: train a source agent, transfer it to similar games, and measure whether it paid.

The freeze / replace-head core works on any ``torch.nn.Module``; it, the RL names (on Stable-Baselines3 and
gymnasium), the study and image transfer (on torchvision) load on first use, so that importing the package (and
``rltransfer --help``) does not wait for torch. Importing rltransfer registers its game families (``rltransfer/CartPoleLongPole-v1``, ...) with gymnasium. Image helpers
beyond ``run_image`` live in :mod:`rltransfer.vision`.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from rltransfer import envs  # noqa: F401  (registers the game families with gymnasium)
from rltransfer.core.errors import ConfigError, LayerSelectionError, RLTransferError, TransferError

if TYPE_CHECKING:  # what IDEs and type checkers see for the names loaded on first use
    from rltransfer.agents.builder import build_agent
    from rltransfer.agents.freezing import freeze_agent
    from rltransfer.core.config import load_config
    from rltransfer.core.heads import find_head, replace_head
    from rltransfer.core.layers import (
        format_layers,
        freeze,
        frozen_layers,
        list_layers,
        select_layers,
        unfreeze,
    )
    from rltransfer.core.optim import build_optimizer
    from rltransfer.rl.config import TrainConfig, TransferConfig
    from rltransfer.rl.evaluate import evaluate
    from rltransfer.rl.mapping import map_weights
    from rltransfer.rl.select import select_source
    from rltransfer.rl.sources import load_source
    from rltransfer.rl.training import train
    from rltransfer.rl.transfer import transfer
    from rltransfer.study.config import StudyConfig
    from rltransfer.study.run import run_study
    from rltransfer.tune.config import TuneConfig
    from rltransfer.tune.search import run_tune
    from rltransfer.vision.config import ImageConfig
    from rltransfer.vision.pipeline import run_image

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("rltransfer")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

_LAZY = {
    "find_head": "rltransfer.core.heads",
    "replace_head": "rltransfer.core.heads",
    "format_layers": "rltransfer.core.layers",
    "freeze": "rltransfer.core.layers",
    "frozen_layers": "rltransfer.core.layers",
    "list_layers": "rltransfer.core.layers",
    "select_layers": "rltransfer.core.layers",
    "unfreeze": "rltransfer.core.layers",
    "build_optimizer": "rltransfer.core.optim",
    "load_config": "rltransfer.core.config",
    "TrainConfig": "rltransfer.rl.config",
    "TransferConfig": "rltransfer.rl.config",
    "StudyConfig": "rltransfer.study.config",
    "TuneConfig": "rltransfer.tune.config",
    "ImageConfig": "rltransfer.vision.config",
    "train": "rltransfer.rl.training",
    "transfer": "rltransfer.rl.transfer",
    "run_study": "rltransfer.study.run",
    "run_tune": "rltransfer.tune.search",
    "evaluate": "rltransfer.rl.evaluate",
    "select_source": "rltransfer.rl.select",
    "run_image": "rltransfer.vision.pipeline",
    "load_source": "rltransfer.rl.sources",
    "map_weights": "rltransfer.rl.mapping",
    "build_agent": "rltransfer.agents.builder",
    "freeze_agent": "rltransfer.agents.freezing",
}

__all__ = [
    "ConfigError",
    "LayerSelectionError",
    "RLTransferError",
    "TransferError",
    "build_optimizer",
    "find_head",
    "format_layers",
    "freeze",
    "frozen_layers",
    "list_layers",
    "replace_head",
    "select_layers",
    "unfreeze",
    "load_config",
    "TrainConfig",
    "TransferConfig",
    "StudyConfig",
    "TuneConfig",
    "ImageConfig",
    "train",
    "transfer",
    "run_study",
    "run_tune",
    "evaluate",
    "select_source",
    "run_image",
    "load_source",
    "map_weights",
    "build_agent",
    "freeze_agent",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rltransfer' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
