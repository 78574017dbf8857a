"""The command line end to end on tiny budgets, and its errors: one paragraph, exit 2, no traceback, no files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "rltransfer.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


TINY = [
    "--budget",
    "512",
    "--device",
    "cpu",
    "--no-progress",
    "--set",
    "eval.every=256",
    "--set",
    "eval.episodes=2",
    "--set",
    "env.n_envs=4",
    "--set",
    "agent.hyperparams={n_steps: 32, batch_size: 64, n_epochs: 2}",
]


@pytest.mark.slow
def test_train_then_transfer_with_the_shipped_configs(tmp_path: Path) -> None:
    train = cli("train", str(REPO / "configs/cartpole/source.yaml"), *TINY, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "best evaluation return" in train.stdout
    transfer = cli("transfer", str(REPO / "configs/cartpole/transfer.yaml"), *TINY[:-2], cwd=tmp_path)
    assert transfer.returncode == 0, transfer.stderr
    assert (
        "copied" in transfer.stdout and "Frozen layers after fine-tuning: bit-identical." in transfer.stdout
    )
    runs = tmp_path / "runs"
    assert {p.name for p in runs.iterdir()} == {"cartpole-source", "cartpole-longpole"}
    record = json.loads((runs / "cartpole-longpole" / "run.json").read_text())
    assert record["kind"] == "transfer" and record["frozen_unchanged"] is True
    assert record["source"].endswith("cartpole-source/best_model.zip")
    # a second run of the same name keeps the first one, moved aside
    again = cli("train", str(REPO / "configs/cartpole/source.yaml"), *TINY, cwd=tmp_path)
    assert again.returncode == 0 and "was moved to" in again.stderr
    assert len([p for p in runs.iterdir() if p.name.startswith("cartpole-source")]) == 2
    layers = cli("layers", str(runs / "cartpole-source"), cwd=tmp_path)
    assert layers.returncode == 0 and "mlp_extractor.policy_net.0.weight" in layers.stdout


@pytest.mark.slow
def test_envs_lists_the_family(tmp_path: Path) -> None:
    result = cli("envs", cwd=tmp_path)
    assert result.returncode == 0 and "rltransfer/CartPoleLongPole-v1" in result.stdout


def write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    base = {"budget": 64, "env": {"id": "rltransfer/CartPole-v1"}, "eval": {"every": 32}}
    source = tmp_path / "source.zip"
    from stable_baselines3 import PPO

    PPO("MlpPolicy", "CartPole-v1", device="cpu").save(source)
    transfer = {**base, "source": str(source)}
    study = {
        "budget": 64,
        "eval": {"every": 32},
        "source": {"path": str(source)},
        "targets": [{"id": "rltransfer/CartPoleLongPole-v1"}],
    }
    return [
        (
            ["train", write(tmp_path, "a.yaml", {**base, "budgit": 5})],
            "`budgit` is not a known setting (did you mean `budget`?)",
        ),
        (["train", write(tmp_path, "b.yaml", {**base, "budget": "many"})], "`budget` is invalid"),
        (["train", str(tmp_path / "missing.yaml")], "does not exist"),
        (
            ["train", write(tmp_path, "c.yaml", {**base, "env": {"id": "CartPol-v1"}})],
            "did you mean `CartPole-v1`",
        ),
        (
            ["transfer", write(tmp_path, "d.yaml", {**transfer, "source": "runs/nothing"})],
            "Source agent runs/nothing does not exist",
        ),
        (
            ["transfer", write(tmp_path, "e.yaml", {**transfer, "freeze": ["mlp_extractor.poliy_net.0"]})],
            "`freeze`: The layer selector `mlp_extractor.poliy_net.0` matches no layer",
        ),
        (
            [
                "transfer",
                write(tmp_path, "f.yaml", {**transfer, "agent": {"algo": "ppo", "policy": {"hidden": [7]}}}),
            ],
            "No layer of the source",
        ),
        (
            ["train", write(tmp_path, "g.yaml", {**base, "name": "x"}), "--set", "agent.optimizer.lr=fast"],
            "`agent.optimizer.lr` is invalid",
        ),
        (
            ["study", write(tmp_path, "h.yaml", {**study, "strategies": ["finetun"]})],
            "unknown strategy `finetun` (did you mean `finetune`?)",
        ),
        (["study", write(tmp_path, "i.yaml", study), "--seeds", "0"], "`seeds` is invalid"),
    ]


@pytest.mark.slow
def test_every_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    for args, expected in bad_inputs(tmp_path):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("rltransfer: error: ") and expected in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0  # one paragraph
        assert not (tmp_path / "runs").exists(), args  # nothing written
