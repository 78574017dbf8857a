"""Shared fixtures: tiny, seeded configs that run in seconds on a CPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)

TINY_AGENT: dict[str, Any] = {
    "algo": "ppo",
    "hyperparams": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
    "policy": {"hidden": [16, 16]},
}


@pytest.fixture
def tiny_train(tmp_path: Path) -> dict[str, Any]:
    """A train config mapping: PPO on CartPole, 512 steps, evaluation every 256 steps on 2 episodes."""
    return {
        "name": "tiny-source",
        "seed": 0,
        "device": "cpu",
        "log_root": str(tmp_path / "runs"),
        "budget": 512,
        "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
        "eval": {"every": 256, "episodes": 2, "patience": None},
        "agent": copy.deepcopy(TINY_AGENT),
    }


@pytest.fixture
def tiny_transfer(tmp_path: Path) -> dict[str, Any]:
    """A transfer config mapping without its source (set `source` in the test)."""
    return {
        "name": "tiny-transfer",
        "seed": 1,
        "device": "cpu",
        "log_root": str(tmp_path / "runs"),
        "budget": 512,
        "env": {"id": "rltransfer/CartPoleLongPole-v1", "n_envs": 4},
        "eval": {"every": 256, "episodes": 2, "patience": None},
    }
