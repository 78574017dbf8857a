"""Kickstarting: a distillation loss toward the source's policy, with a weight that follows its schedule."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import torch

import rltransfer
from rltransfer.agents.kickstart import Kickstart, _AddLoss
from rltransfer.core.errors import ConfigError


def test_the_added_loss_reaches_the_gradients_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    (_AddLoss.apply(x, (w**2).sum() * 0.5) * 2.0).sum().backward()
    x_grad, w_grad = x.grad.clone(), w.grad.clone()
    x.grad, w.grad = None, None
    ((x * 2.0).sum() + (w**2).sum() * 0.5).backward()
    assert torch.equal(x_grad, x.grad) and torch.equal(w_grad, w.grad)


@pytest.mark.parametrize(
    ("schedule", "expected"), [("linear", [2.0, 1.5, 1.0, 0.0, 0.0]), ("constant", [2.0, 2.0, 2.0, 0.0, 0.0])]
)
def test_the_weight_follows_its_schedule(schedule: str, expected: list[float]) -> None:
    kick = Kickstart(torch.nn.Identity(), weight=2.0, steps=400, schedule=schedule)
    assert [kick.weight_at(t) for t in (0, 100, 200, 400, 500)] == expected


def _kickstarted(tiny_transfer: dict[str, Any], source: Path, **kickstart: Any) -> dict[str, Any]:
    config = copy.deepcopy(tiny_transfer)
    config.update(source=str(source), budget=1024)
    config["agent"] = {"kickstart": {"weight": 1.0, **kickstart}}
    return config


def _progress(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "progress.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("train/kickstart_weight")]


def test_a_ppo_transfer_logs_the_decaying_weight_and_a_loss(tiny_transfer, tiny_source: Path) -> None:
    result = rltransfer.transfer(_kickstarted(tiny_transfer, tiny_source, steps=512), progress_bar=False)
    rows = _progress(result.run_dir)
    # 4 envs x 32 steps = 128 steps per rollout; an update runs after each rollout, at its step count, and SB3
    # writes its values in the row of the next rollout
    steps = [int(row["time/total_timesteps"]) - 128 for row in rows]
    weights = [float(row["train/kickstart_weight"]) for row in rows]
    assert weights == [pytest.approx(max(0.0, 1.0 - t / 512)) for t in steps]
    assert weights[0] == 0.75 and weights[-1] == 0.0
    losses = [row["train/kickstart_loss"] for row in rows if float(row["train/kickstart_weight"]) > 0]
    assert losses and all(float(loss) >= 0 for loss in losses if loss)
    from stable_baselines3 import PPO  # the saved agent holds no teacher: plain SB3 reads it back

    assert not hasattr(PPO.load(result.run_dir / "best_model.zip", device="cpu"), "kickstart")


def test_kickstarting_pulls_the_policy_toward_the_source(tiny_transfer, tiny_source: Path, tmp_path) -> None:
    """Fine-tuned on another game with a strong pull, the policy stays closer to the source's than without."""
    from stable_baselines3 import PPO

    def distance(config: dict[str, Any]) -> float:
        run_dir = rltransfer.transfer(config, progress_bar=False).run_dir
        tuned = PPO.load(run_dir / "last_model.zip", device="cpu").policy
        source = PPO.load(tiny_source / "best_model.zip", device="cpu").policy
        observations = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            p = source.get_distribution(observations).distribution
            q = tuned.get_distribution(observations).distribution
        return float(torch.distributions.kl_divergence(p, q).mean())

    plain = copy.deepcopy(tiny_transfer)
    plain.update(source=str(tiny_source), budget=1024, name="plain", agent={"optimizer": {"lr": 0.003}})
    pulled = _kickstarted(tiny_transfer, tiny_source, weight=50.0, schedule="constant")
    pulled["agent"]["optimizer"] = {"lr": 0.003}
    assert distance(pulled) < 0.5 * distance(plain)


def test_dqn_is_kickstarted_from_the_source_s_q_values(tmp_path: Path) -> None:
    agent = {"algo": "dqn", "hyperparams": {"learning_starts": 0, "buffer_size": 2000, "train_freq": 4},
             "policy": {"hidden": [16]}}  # fmt: skip
    base = {"seed": 0, "device": "cpu", "log_root": str(tmp_path / "runs"), "budget": 512,
            "eval": {"every": 256, "episodes": 2, "patience": None}}  # fmt: skip
    source = rltransfer.train(
        {**base, "name": "dqn-source", "env": {"id": "rltransfer/CartPole-v1"}, "agent": agent},
        progress_bar=False,
    ).run_dir
    result = rltransfer.transfer(
        {**base, "name": "dqn-kick", "source": str(source), "env": {"id": "rltransfer/CartPoleLongPole-v1"},
         "agent": {"kickstart": {"weight": 1.0}}},
        progress_bar=False,
    )  # fmt: skip
    rows = _progress(result.run_dir)
    assert rows and float(rows[0]["train/kickstart_weight"]) > 0 and rows[0]["train/kickstart_loss"]


def test_kickstarting_needs_the_source_to_act_in_the_target(tiny_transfer, tiny_source: Path) -> None:
    config = _kickstarted(tiny_transfer, tiny_source)
    config["env"] = {"id": "rltransfer/Acrobot-v1", "n_envs": 4}  # 6 observations and 3 actions, not 4 and 2
    with pytest.raises(ConfigError, match="cannot act in the target game") as error:
        rltransfer.transfer(config, progress_bar=False)
    assert "agent.kickstart" in str(error.value)
    assert not (Path(config["log_root"]) / config["name"]).exists()  # refused before a run directory is made


def test_kickstarting_is_refused_where_there_is_no_source(tiny_train, tmp_path: Path) -> None:
    train = {**tiny_train, "agent": {**tiny_train["agent"], "kickstart": {"weight": 1.0}}}
    with pytest.raises(ConfigError, match="`rltransfer train` has no source"):
        rltransfer.train(train, progress_bar=False)
    with pytest.raises(ConfigError, match="not SAC"):
        rltransfer.load_config(
            _write(tmp_path / "t.yaml", "name: t\nsource: x\nbudget: 10000\nenv: {id: Pendulum-v1}\n"
                   "agent: {algo: sac, kickstart: {weight: 1}}\n"),
            rltransfer.TransferConfig,
        )  # fmt: skip
    study = {"name": "s", "source": {"path": "x"}, "targets": [{"id": "CartPole-v1"}], "budget": 10000,
             "agent": {"kickstart": {"weight": 1.0}}}  # fmt: skip
    with pytest.raises(ConfigError, match="would reach scratch"):
        rltransfer.StudyConfig.model_validate(study).check("s.yaml")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_study_compares_kickstarting_as_a_strategy(tiny_source: Path, tmp_path: Path) -> None:
    from rltransfer.study.plan import plan_study

    config = rltransfer.StudyConfig.model_validate(
        {
            "name": "kick",
            "log_root": str(tmp_path / "runs"),
            "device": "cpu",
            "source": {"path": str(tiny_source)},
            "targets": [{"id": "rltransfer/CartPoleLongPole-v1"}],
            "strategies": ["finetune", {"name": "kickstart", "agent": {"kickstart": {"weight": 1.0}}}],
            "seeds": 1,
            "budget": 512,
            "eval": {"every": 256, "episodes": 2},
        }
    )
    runs = {spec.strategy: spec for spec in plan_study(config).runs}
    assert runs["kickstart"].config["agent"]["kickstart"]["weight"] == 1.0
    assert runs["finetune"].config["agent"]["kickstart"]["weight"] == 0.0
    assert runs["scratch"].config["agent"]["kickstart"]["weight"] == 0.0


def test_continuous_actions_are_kickstarted_through_their_gaussians(tmp_path: Path) -> None:
    agent = {"algo": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 2},
             "policy": {"hidden": [16]}}  # fmt: skip
    base = {"seed": 0, "device": "cpu", "log_root": str(tmp_path / "runs"), "budget": 512,
            "eval": {"every": 256, "episodes": 2, "patience": None}}  # fmt: skip
    source = rltransfer.train(
        {**base, "name": "pendulum", "env": {"id": "rltransfer/Pendulum-v1", "n_envs": 2}, "agent": agent},
        progress_bar=False,
    ).run_dir
    result = rltransfer.transfer(
        {**base, "name": "kick", "source": str(source), "env": {"id": "rltransfer/PendulumHeavy-v1", "n_envs": 2},
         "agent": {"kickstart": {"weight": 1.0}}},
        progress_bar=False,
    )  # fmt: skip
    rows = _progress(result.run_dir)
    losses = [float(row["train/kickstart_loss"]) for row in rows if row["train/kickstart_loss"]]
    assert losses and all(loss >= 0.0 for loss in losses) and any(loss > 0.0 for loss in losses)


@pytest.mark.parametrize("key", ["weight", "temperature"])
def test_infinite_kickstart_settings_are_refused_naming_the_key(key: str) -> None:
    from rltransfer.agents.config import parse_agent

    with pytest.raises(ConfigError, match=f"kickstart.{key}"):
        parse_agent({"algo": "dqn", "kickstart": {"weight": 1.0, key: float("inf")}})


def test_a_transfer_s_own_hyperparameters_are_checked_against_the_source_s_algorithm(tmp_path: Path) -> None:
    config = {"name": "t", "source": "x", "budget": 512, "env": {"id": "CartPole-v1"}, "eval": {"every": 256},
              "agent": {"hyperparams": {"learning_starts": 64}}}  # fmt: skip
    rltransfer.TransferConfig.model_validate(config).check("t.yaml")  # DQN's setting: checked once inherited
    with pytest.raises(ConfigError, match="not a setting of PPO"):
        config["agent"]["algo"] = "ppo"
        rltransfer.TransferConfig.model_validate(config).check("t.yaml")
