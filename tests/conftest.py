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


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished rltransfer run (PPO on CartPole, 512 steps, seed 0) shared by the whole session: tests read
    it as a source and never write into it."""
    import rltransfer

    log_root = tmp_path_factory.mktemp("shared-source")
    config = {
        "name": "tiny-source",
        "seed": 0,
        "device": "cpu",
        "log_root": str(log_root),
        "budget": 512,
        "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
        "eval": {"every": 256, "episodes": 2, "patience": None},
        "agent": copy.deepcopy(TINY_AGENT),
    }
    return rltransfer.train(config, progress_bar=False).run_dir


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


class Cli:
    """Running ``rltransfer`` in subprocesses: long runs to interrupt, signals, saved-config edits."""

    @staticmethod
    def rltransfer_cli(*args: str) -> list[str]:
        """The command line that runs ``rltransfer ARGS...`` with this interpreter."""
        import sys

        return [sys.executable, "-m", "rltransfer.cli", *args]

    @staticmethod
    def long_image_run(log_root: Path) -> list[str]:
        """``rltransfer image`` on the digits with a 400-epoch source and a checkpoint after every epoch."""
        return Cli.rltransfer_cli(
            "image", "images/digits", "--log-root", str(log_root), "--no-progress", "--device", "cpu",
            "--set", "checkpoint_seconds=0", "--set", "source.stages=[{name: s, train: ['*'], epochs: 400}]",
        )  # fmt: skip

    @staticmethod
    def long_train_run(log_root: Path) -> list[str]:
        """``rltransfer train`` of the CartPole source into LOG_ROOT/source for a million steps, evaluating every 500."""
        return Cli.rltransfer_cli(
            "train", "cartpole/source", "--log-root", str(log_root), "--name", "source", "--no-progress",
            "--budget", "1000000", "--set", "eval.every=500", "--set", "eval.episodes=2",
            "--set", "eval.threshold=null", "--set", "eval.patience=null",
        )  # fmt: skip

    @staticmethod
    def signal_when_ready(
        command: list[str], ready: Path, signum: int, settle: float = 0.0
    ) -> tuple[int, str]:
        """Start `command`, wait (up to 2 minutes) until the file `ready` exists, then `settle` seconds more, send
        `signum`; return the exit code and what it printed on stderr."""
        import subprocess
        import time

        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(settle)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        return process.returncode, stderr

    @staticmethod
    def resume(command: str, run_dir: Path) -> Any:
        """``rltransfer COMMAND --resume RUN_DIR``, run to its end (a CompletedProcess with text output)."""
        import subprocess

        return subprocess.run(
            Cli.rltransfer_cli(command, "--resume", str(run_dir), "--no-progress"),
            capture_output=True,
            text=True,
            timeout=300,
        )

    @staticmethod
    def shorten_budget(run_dir: Path, old: str, new: str) -> None:
        """Edit the saved config of an interrupted run (so that its resumption ends soon)."""
        config = run_dir / "config.yaml"
        config.write_text(config.read_text().replace(old, new))


@pytest.fixture
def cli() -> type[Cli]:
    """The :class:`Cli` helpers."""
    return Cli
