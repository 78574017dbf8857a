"""Evaluation episodes played side by side: the same episodes and returns as one after another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO

from rltransfer import train
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import EVAL_SEED_OFFSET, evaluation_env_maker, make_envs
from rltransfer.rl.episodes import EvaluationEpisodes, side_by_side


def test_side_by_side_plays_the_same_episodes_in_the_same_order() -> None:
    torch.manual_seed(0)
    env = EnvConfig(id="rltransfer/CartPoleShortPole-v1", n_envs=1)
    train_env, one_by_one_env = make_envs(env, 3)
    _, other_env = make_envs(env, 3)
    model = PPO("MlpPolicy", train_env, n_steps=256, seed=0, device="cpu")
    model.learn(1024)
    one_by_one = EvaluationEpisodes(one_by_one_env, episodes=7, deterministic=True)
    together = EvaluationEpisodes(
        other_env,
        episodes=7,
        deterministic=True,
        side_by_side=3,  # fewer envs than episodes: envs take the next episode as theirs end
        make_env=evaluation_env_maker(env),
        seed=3 + EVAL_SEED_OFFSET,
    )
    for _ in range(3):  # consecutive evaluations continue the same stream of starting states
        returns, lengths = one_by_one.play(model)
        assert together.play(model) == (returns, lengths)
    assert len(set(lengths)) > 1  # the episodes differ, so a wrong order would show
    resumed = EvaluationEpisodes(
        make_envs(env, 3)[1], episodes=7, deterministic=True, side_by_side=7,
        make_env=evaluation_env_maker(env), seed=3 + EVAL_SEED_OFFSET,
    )  # fmt: skip
    resumed.load_state(together.state())
    assert resumed.play(model) == one_by_one.play(model)


def test_side_by_side_only_where_it_gives_the_same_returns() -> None:
    pick = side_by_side
    assert (
        pick("rltransfer/CartPoleShortPole-v1", {}, "auto", 10, deterministic=True, discrete_actions=True)
        == 10
    )
    assert pick("CartPole-v1", {}, "auto", 50, deterministic=True, discrete_actions=True) == 32
    assert pick("CartPole-v1", {}, "auto", 10, deterministic=False, discrete_actions=True) == 1
    assert pick("rltransfer/Pendulum-v1", {}, "auto", 10, deterministic=True, discrete_actions=False) == 1
    assert pick("rltransfer/Pendulum-v1", {}, 4, 10, deterministic=True, discrete_actions=False) == 4
    assert (
        pick("rltransfer/AcrobotNoisyTorque-v1", {}, "auto", 10, deterministic=True, discrete_actions=True)
        == 1
    )
    assert pick("rltransfer/Acrobot-v1", {}, "auto", 10, deterministic=True, discrete_actions=True) == 10
    noisy = {"torque_noise_max": 0.1}
    assert pick("rltransfer/Acrobot-v1", noisy, "auto", 10, deterministic=True, discrete_actions=True) == 1
    with pytest.raises(ConfigError, match=r"`eval.envs: 4`.*draws random numbers while an episode runs"):
        pick("rltransfer/Acrobot-v1", noisy, 4, 10, deterministic=True, discrete_actions=True)
    with pytest.raises(ConfigError, match=r"`eval.envs: 2`.*stochastic policy"):
        pick("CartPole-v1", {}, 2, 10, deterministic=False, discrete_actions=True)


def test_a_run_evaluates_the_same_either_way(tmp_path: Path) -> None:
    curves = []
    for envs in ("auto", 1):
        config = {
            "name": f"envs-{envs}", "log_root": str(tmp_path), "budget": 1024, "seed": 1,
            "env": {"id": "CartPole-v1", "n_envs": 2},
            "eval": {"every": 512, "episodes": 5, "envs": envs, "patience": None},
            "agent": {"algo": "ppo", "hyperparams": {"n_steps": 128}},
        }  # fmt: skip
        train(config, progress_bar=False)
        curves.append(json.loads((tmp_path / f"envs-{envs}" / "evaluations.json").read_text()))
    assert curves[0] == curves[1] and len(curves[0]) == 3


def test_the_benchmark_prints_identical_returns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_speed.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--steps", "256", "--episodes", "4", "--evaluations", "2"])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[2] for line in lines[1:3]] == ["True", "True"] and "median speed-up" in lines[
        -1
    ]
