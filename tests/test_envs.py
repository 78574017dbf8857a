"""The CartPole family: ids that pass gymnasium's checker, context that really changes the physics, module:EnvId."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rltransfer  # noqa: F401  (registers the ids)
from rltransfer.envs import FAMILIES, describe_families
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import check_env_id, make_envs

IDS = sorted(env_id for family in FAMILIES.values() for env_id in family.ids())


@pytest.mark.parametrize(
    "env_id",
    # one Atari game in the fast tier: each takes a second or two to emulate
    [pytest.param(i, marks=pytest.mark.slow) if "Atari" in i and "Pong" not in i else i for i in IDS],
)
def test_every_registered_id_passes_the_env_checker(env_id: str) -> None:
    from rltransfer.envs import family_of

    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    family = family_of(env_id)
    assert env.spec.max_episode_steps == family.max_episode_steps
    assert env.spec.reward_threshold == family.reward_threshold
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


def one_step(env_id: str, context: dict, state: np.ndarray, action) -> np.ndarray:
    """The unwrapped state after one step from `state` (observations may hide what changed)."""
    env = gym.make(env_id, **context)
    env.reset(seed=0)
    env.unwrapped.state = np.array(state, dtype=np.float64)
    env.step(action)
    return np.asarray(env.unwrapped.state, dtype=np.float64)


def test_mountain_car_context_changes_the_physics() -> None:
    start = [-0.5, 0.0]
    base = one_step("rltransfer/MountainCar-v1", {}, start, 2)
    assert one_step("rltransfer/MountainCar-v1", {"force": 0.002}, start, 2)[1] > base[1]  # stronger engine
    # high on the left slope gravity pulls towards the valley (rightwards); more gravity, more speed
    slope = [-0.9, 0.0]
    assert (
        one_step("rltransfer/MountainCarHighGravity-v1", {}, slope, 1)[1]
        > one_step("rltransfer/MountainCar-v1", {}, slope, 1)[1]
        > 0
    )
    env = gym.make("rltransfer/MountainCar-v1", goal_position=0.3)
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.29, 0.05])
    assert env.step(2)[2]  # reaches the nearer flag


def test_acrobot_context_changes_the_physics() -> None:
    start = [0.3, -0.2, 0.0, 0.0]
    base = one_step("rltransfer/Acrobot-v1", {}, start, 2)
    assert not np.allclose(one_step("rltransfer/AcrobotHeavyLink-v1", {}, start, 2), base)
    assert not np.allclose(one_step("rltransfer/AcrobotLongLink-v1", {}, start, 2), base)
    # a longer time step moves the arm further in one step
    assert abs(one_step("rltransfer/Acrobot-v1", {"dt": 0.4}, start, 2)[0] - 0.3) > abs(base[0] - 0.3)


def test_pendulum_context_changes_the_physics() -> None:
    horizontal = [np.pi / 2, 0.0]
    base = one_step("rltransfer/Pendulum-v1", {}, horizontal, np.array([0.0], dtype=np.float32))
    stronger = one_step(
        "rltransfer/PendulumHighGravity-v1", {}, horizontal, np.array([0.0], dtype=np.float32)
    )
    assert abs(stronger[1]) > abs(base[1]) > 0  # falls faster under more gravity
    push = np.array([2.0], dtype=np.float32)
    light = one_step("rltransfer/Pendulum-v1", {}, [np.pi, 0.0], push)
    heavy = one_step("rltransfer/PendulumHeavy-v1", {}, [np.pi, 0.0], push)
    assert light[1] > heavy[1] > 0  # the same torque accelerates a heavier pendulum less


def test_lunar_lander_context_changes_the_physics() -> None:
    pytest.importorskip("Box2D")

    def fall(env_id: str, steps: int = 30) -> tuple[float, float]:
        env = gym.make(env_id)
        env.reset(seed=3)
        for _ in range(steps):
            observation, *_ = env.step(0)  # engines off
        env.close()
        return float(observation[2]), float(observation[3])  # horizontal and vertical speed

    base = fall("rltransfer/LunarLander-v3")
    assert fall("rltransfer/LunarLanderLowGravity-v3")[1] > base[1]  # falls more slowly
    assert fall("rltransfer/LunarLanderHighGravity-v3")[1] < base[1]
    assert fall("rltransfer/LunarLanderWindy-v3")[0] != pytest.approx(base[0], abs=1e-3)  # blown sideways


def test_a_family_whose_package_is_missing_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "Box2D" else real(name, *a)
    )
    with pytest.raises(
        rltransfer.ConfigError, match=r"LunarLander family.*pip install 'rltransfer\[box2d\]'"
    ):
        check_env_id("rltransfer/LunarLanderWindy-v3")
    assert (
        "LunarLander: land a craft" in describe_families()
        and "[not installed: pip install" in describe_families()
    )


def test_subprocess_envs_step_exactly_as_in_process_ones_and_atari_gets_them_by_default() -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from rltransfer.rl.environment import vec_env_class

    steps = {}
    for vec in ("dummy", "subproc"):
        train_env, eval_env = make_envs(
            EnvConfig(id="rltransfer/CartPoleLongPole-v1", n_envs=3, vec=vec), seed=7
        )
        assert isinstance(train_env, SubprocVecEnv if vec == "subproc" else DummyVecEnv)
        observations = [train_env.reset()]
        for _ in range(60):  # past the first episode ends: auto-reset seeded alike in both
            observations.append(train_env.step(np.ones(3, dtype=np.int64))[0])
        train_env.close()
        eval_env.close()
        steps[vec] = np.stack(observations)
    assert np.array_equal(steps["dummy"], steps["subproc"])
    atari = next(iter(FAMILIES["Atari"].ids()))
    assert vec_env_class(EnvConfig(id=atari, n_envs=8), cpus=8) is SubprocVecEnv
    assert vec_env_class(EnvConfig(id=atari, n_envs=8), cpus=2) is DummyVecEnv  # slower on 2 cores
    assert vec_env_class(EnvConfig(id=atari, n_envs=1), cpus=8) is DummyVecEnv
    assert vec_env_class(EnvConfig(id="rltransfer/CartPole-v1", n_envs=8), cpus=8) is DummyVecEnv
    assert vec_env_class(EnvConfig(id=atari, n_envs=8, vec="dummy"), cpus=8) is DummyVecEnv
