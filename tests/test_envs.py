"""The CartPole family: ids that pass gymnasium's checker, context that really changes the physics, module:EnvId."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rltransfer  # noqa: F401  (registers the ids)
from rltransfer.config import EnvConfig
from rltransfer.environment import check_env_id, make_envs
from rltransfer.envs import FAMILIES, describe_families

IDS = sorted(env_id for family in FAMILIES.values() for env_id in family.ids())


@pytest.mark.parametrize("env_id", IDS)
def test_every_registered_id_passes_the_env_checker(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == 500 and env.spec.reward_threshold == 475.0
    env.close()


def step_from(context: dict, action: int = 1) -> np.ndarray:
    env = gym.make("rltransfer/CartPole-v1", **context)
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.0, 0.0, 0.05, 0.0])
    observation, *_ = env.step(action)
    return observation


def test_context_changes_the_physics() -> None:
    base = step_from({})
    # a longer pole falls more slowly: smaller angular velocity after one step
    assert abs(step_from({"pole_length": 3.0})[3]) < abs(base[3])
    # stronger gravity pulls the pole (leaning right, theta > 0) further right against the push
    assert step_from({"gravity": 50.0})[3] > base[3]
    # a heavier cart accelerates less under the same push
    assert abs(step_from({"masscart": 10.0})[1]) < abs(base[1])
    # a reversed force pushes the other way
    assert np.sign(step_from({"force_mag": -10.0})[1]) == -np.sign(base[1])
    # the registered variant carries its context
    assert gym.make("rltransfer/CartPoleLongPole-v1").unwrapped.length == 3.0


def test_out_of_range_context_is_refused_by_the_env_too() -> None:
    with pytest.raises(rltransfer.ConfigError, match=r"range \[0.5, 100.0\]"):
        gym.make("rltransfer/CartPole-v1", gravity=0.0)


def test_module_colon_env_id_form(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_games.py").write_text(
        "import gymnasium as gym\n"
        "gym.register(id='MyCartPole-v0', entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv',"
        " max_episode_steps=50)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_env_id("my_games:MyCartPole-v0").max_episode_steps == 50
    train_env, eval_env = make_envs(EnvConfig(id="my_games:MyCartPole-v0", n_envs=2), seed=0)
    assert train_env.num_envs == 2 and eval_env.num_envs == 1
    sys.modules.pop("my_games", None)


def test_family_listing_names_ids_and_ranges() -> None:
    text = describe_families()
    assert "rltransfer/CartPoleLongPole-v1  (pole_length=3.0)" in text
    assert "pole_length = 0.5  range [0.05, 5.0]" in text
