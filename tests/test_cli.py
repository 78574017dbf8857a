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
    # what a user reads: the zero-shot return first, then where the curve is and how to tell whether it paid
    assert "Zero-shot return (before fine-tuning): " in transfer.stdout
    assert "Did it pay? Compare with learning from scratch" in transfer.stdout
    for run in ("cartpole-source", "cartpole-longpole"):
        assert (runs / run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_layers_help_says_what_it_prints(capsys) -> None:
    from rltransfer.cli import main

    with pytest.raises(SystemExit):
        main(["layers", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "name, shape, parameter count" in help_text and "without .weight / .bias" in help_text


def test_version_prints_the_installed_version(capsys) -> None:
    from importlib.metadata import version

    from rltransfer.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"rltransfer {version('rltransfer')}"


@pytest.mark.parametrize(
    ("kind", "setting", "expected"),
    [
        (
            "train",
            "n_timesteps=1000",
            "`n_timesteps` is not a setting here: rltransfer calls the training length `budget`",
        ),
        (
            "train",
            "agent.policy_kwargs={}",
            "`agent.policy_kwargs` is not a setting here: the network is `agent.policy`",
        ),
        (
            "train",
            "threshold=400",
            "`threshold` is not a setting here: a run's return threshold is `eval.threshold`",
        ),
        (
            "study",
            "eval.threshold=400",
            "`eval.threshold` is not a setting here: a study's (or tuning's) return",
        ),
        (
            "study",
            "eval.patience=3",
            "`eval.patience` is not a setting here: the runs of a study or tuning never",
        ),
    ],
)
def test_keys_from_the_zoo_or_another_config_kind_point_to_the_right_place(kind, setting, expected) -> None:
    from rltransfer.core.config import load_config
    from rltransfer.core.errors import ConfigError
    from rltransfer.rl.config import TrainConfig
    from rltransfer.study.config import StudyConfig

    model, path = (
        (TrainConfig, "configs/cartpole/source.yaml")
        if kind == "train"
        else (StudyConfig, "configs/cartpole/study.yaml")
    )
    key, _, value = setting.partition("=")
    with pytest.raises(ConfigError) as error:
        load_config(REPO / path, model, {key: yaml.safe_load(value)})
    assert expected in str(error.value)


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


@pytest.mark.parametrize("item", [".=1", "eval..every=1", "eval.=3"])
def test_a_set_key_with_an_empty_part_is_blamed_on_set(item, capsys) -> None:
    from rltransfer.cli import main

    assert main(["train", "cartpole/source", "--set", item]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"rltransfer: error: --set {item!r}: the key ") and "empty part" in error
