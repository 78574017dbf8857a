"""MinAtar, MiniGrid DoorKey and Atari: context that changes the game (measured), CNN policies, input adapters and
new heads, layer maps, transfer chains, and the errors for bad chains, maps and contexts."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import rltransfer
from rltransfer.agents import build_agent
from rltransfer.agents.config import AgentConfig
from rltransfer.core.record import RunRecord
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import check_env_id, make_envs
from rltransfer.rl.mapping import map_weights
from rltransfer.rl.sources import load_source

pytest.importorskip("minatar")
pytest.importorskip("minigrid")

CNN_AGENT = {
    "algo": "ppo",
    "hyperparams": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
    "policy": {"hidden": [16], "features": "small_cnn", "features_dim": 32},
}
GRID_AGENT = {
    "algo": "ppo",
    "hyperparams": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
    "policy": {"hidden": [16, 16]},
}


def run_config(tmp_path, name: str, env_id: str, budget: int = 64, **extra) -> dict:
    return {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "log_root": str(tmp_path / "runs"),
        "budget": budget,
        "env": {"id": env_id, "n_envs": 2},
        "eval": {"every": 32, "episodes": 1, "patience": None},
        **extra,
    }


def paddle_follows_command(sticky: float, steps: int = 300) -> float:
    """Fraction of MinAtar Breakout steps where the paddle moved the way the (alternating) command said."""
    env = gym.make("rltransfer/MinAtarBreakout-v1", sticky_action_prob=sticky)
    observation, _ = env.reset(seed=0)
    followed = moved = 0
    for step in range(steps):
        before = int(np.argmax(observation[0, 9]))  # channel 0 = paddle, bottom row
        action = 1 if step % 2 == 0 else 2  # minimal action set: 0 no-op, 1 left, 2 right
        observation, _, terminated, truncated, _ = env.step(action)
        after = int(np.argmax(observation[0, 9]))
        if 0 < before < 9:  # away from the walls the paddle always moves
            moved += 1
            followed += (after - before) == (-1 if action == 1 else 1)
        if terminated or truncated:
            observation, _ = env.reset()
    return followed / moved


def test_minatar_sticky_actions_change_how_the_game_answers() -> None:
    assert paddle_follows_command(0.0) == 1.0
    assert 0.3 < paddle_follows_command(0.5) < 0.8  # half the time the previous action repeats


def test_minatar_games_differ_in_channels_and_actions() -> None:
    shapes = {}
    for game in ("Breakout", "SpaceInvaders", "Freeway", "Asterix", "Seaquest"):
        env = gym.make(f"rltransfer/MinAtar{game}-v1")
        shapes[game] = (env.observation_space.shape, env.action_space.n)
        assert env.observation_space.dtype == np.float32
    assert shapes["Breakout"] == ((4, 10, 10), 3)
    assert shapes["Seaquest"] == ((10, 10, 10), 6)


def test_doorkey_size_changes_the_maze_and_its_time_limit() -> None:
    for size in (5, 8):
        env = gym.make("rltransfer/DoorKey5x5-v1", size=size)
        env.reset(seed=0)
        assert env.unwrapped.grid.width == env.unwrapped.grid.height == size
        assert env.observation_space.shape == (3, 7, 7)  # the agent's view is the same at every size
        steps = 0
        while True:
            *_, terminated, truncated, _ = env.step(6)  # "done": does nothing
            steps += 1
            if terminated or truncated:
                break
        assert truncated and steps == 10 * size * size


def test_context_outside_the_family_or_its_range_is_refused() -> None:
    with pytest.raises(
        rltransfer.ConfigError,
        match=r"`env.context.size` = 20 is outside the DoorKey family's range \[5, 16\]",
    ):
        make_envs(EnvConfig(id="rltransfer/DoorKey8x8-v1", context={"size": 20}), seed=0)
    with pytest.raises(
        rltransfer.ConfigError, match=r"`env.context.game` is not a parameter of the MinAtar family"
    ):
        make_envs(EnvConfig(id="rltransfer/MinAtarBreakout-v1", context={"game": "pong"}), seed=0)
    with pytest.raises(rltransfer.ConfigError, match="whole number"):
        gym.make("rltransfer/DoorKey5x5-v1", size=6.5)


@pytest.mark.parametrize(
    ("module", "env_id", "extra"),
    [
        ("minatar", "rltransfer/MinAtarSeaquest-v1", "minatar"),
        ("minigrid", "rltransfer/DoorKey6x6-v1", "minigrid"),
        ("ale_py", "rltransfer/AtariPong-v1", "atari"),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, env_id, extra) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(rltransfer.ConfigError, match=rf"pip install 'rltransfer\[{extra}\]'"):
        check_env_id(env_id)


def test_small_cnn_needs_image_observations() -> None:
    train_env, _ = make_envs(EnvConfig(id="CartPole-v1", n_envs=1), seed=0)
    agent = AgentConfig(algo="ppo", policy={"features": "small_cnn"})
    with pytest.raises(rltransfer.ConfigError, match=r"features: small_cnn` needs image observations"):
        build_agent(agent, train_env, seed=0, device="cpu")


@pytest.fixture(scope="module")
def breakout_source(tmp_path_factory):
    """A tiny MinAtar Breakout agent (4 channels, 3 actions) with the small CNN."""
    tmp_path = tmp_path_factory.mktemp("minatar")
    config = run_config(tmp_path, "breakout", "rltransfer/MinAtarBreakout-v1", agent=copy.deepcopy(CNN_AGENT))
    return rltransfer.train(config, progress_bar=False).run_dir


def test_minatar_transfer_copies_the_middle_and_reinitialises_adapter_and_head(breakout_source) -> None:
    source = load_source(breakout_source)
    agent = AgentConfig.model_validate(CNN_AGENT)
    train_env, _ = make_envs(
        EnvConfig(id="rltransfer/MinAtarSeaquest-v1", n_envs=2), seed=0
    )  # 10 ch, 6 actions
    target = build_agent(agent, train_env, seed=3, device="cpu")
    fresh = {
        k: v.clone()
        for k, v in build_agent(agent, train_env, seed=3, device="cpu").policy.state_dict().items()
    }
    mapping = map_weights(source.state_dict, target.policy)
    state = target.policy.state_dict()
    assert (
        mapping.reinitialised["features_extractor.conv"]["reason"] == "input adapter: 4 -> 10 input channels"
    )
    assert mapping.reinitialised["action_net"]["reason"] == "new head: 3 -> 6 outputs"
    assert set(mapping.reinitialised) == {"features_extractor.conv", "action_net"}
    middle = {
        "features_extractor.linear",
        "mlp_extractor.policy_net.0",
        "mlp_extractor.value_net.0",
        "value_net",
    }
    assert set(mapping.copied) == middle
    for layer in middle:  # bit for bit, and the actor and critic share the copied extractor
        for name in ("weight", "bias"):
            assert torch.equal(state[f"{layer}.{name}"], source.state_dict[f"{layer}.{name}"])
    assert torch.equal(
        state["vf_features_extractor.linear.weight"], source.state_dict["features_extractor.linear.weight"]
    )
    for layer in ("features_extractor.conv", "action_net"):  # the target's own fresh initialisation
        assert torch.equal(state[f"{layer}.weight"], fresh[f"{layer}.weight"])
        assert state[f"{layer}.weight"].shape != source.state_dict[f"{layer}.weight"].shape
    table = mapping.format()
    assert "re-initialised (input adapter: 4 -> 10 input channels)" in table
    assert table.count("features_extractor.linear") == 1  # aliases of the shared extractor are listed once


def test_minatar_transfer_end_to_end_with_frozen_middle(breakout_source, tmp_path) -> None:
    config = run_config(
        tmp_path,
        "to-space-invaders",
        "rltransfer/MinAtarSpaceInvaders-v1",
        source=str(breakout_source),
        freeze=["features_extractor.linear"],
    )
    result = rltransfer.transfer(config, progress_bar=False, verbose=False)
    assert result.frozen_unchanged is True
    assert {"features_extractor.conv", "action_net"} == set(result.mapping.reinitialised)
    assert result.mapping.frozen[0] == "features_extractor.linear"


def test_layer_map_copies_by_name_and_names_a_missing_layer(breakout_source) -> None:
    source = load_source(breakout_source)
    agent = AgentConfig.model_validate(CNN_AGENT)
    train_env, _ = make_envs(
        EnvConfig(id="rltransfer/MinAtarAsterix-v1", n_envs=2), seed=0
    )  # 4 ch, 5 actions
    target = build_agent(agent, train_env, seed=0, device="cpu")
    mapping = map_weights(
        source.state_dict,
        target.policy,
        layer_map={"mlp_extractor.value_net.0": "mlp_extractor.policy_net.0"},
    )
    assert mapping.renamed == {"mlp_extractor.value_net.0": "mlp_extractor.policy_net.0"}
    assert torch.equal(
        target.policy.state_dict()["mlp_extractor.value_net.0.weight"],
        source.state_dict["mlp_extractor.policy_net.0.weight"],
    )
    assert "copied from mlp_extractor.policy_net.0" in mapping.format()
    with pytest.raises(
        rltransfer.ConfigError,
        match=r"`layer_map`: `features_extractor.cnv` is not a layer of the target agent \(did you mean `features_extractor.conv`\?\)",
    ):
        map_weights(
            source.state_dict, target.policy, layer_map={"features_extractor.cnv": "features_extractor.conv"}
        )
    with pytest.raises(
        rltransfer.ConfigError, match=r"`layer_map.action_net`: `head` is not a layer of the source agent"
    ):
        map_weights(source.state_dict, target.policy, layer_map={"action_net": "head"})
    with pytest.raises(rltransfer.ConfigError, match=r"the shapes differ"):
        map_weights(source.state_dict, target.policy, layer_map={"action_net": "value_net"})


def doorkey_chain(tmp_path, **extra) -> tuple:
    """A tiny DoorKey 5x5 source and a transfer config 5x5 -> 6x6 -> 8x8 from it."""
    source = rltransfer.train(
        run_config(tmp_path, "doorkey5", "rltransfer/DoorKey5x5-v1", agent=copy.deepcopy(GRID_AGENT)),
        progress_bar=False,
    )
    config = run_config(
        tmp_path,
        "chain",
        "rltransfer/DoorKey8x8-v1",
        source=str(source.run_dir),
        chain=[{"env": {"id": "rltransfer/DoorKey6x6-v1", "n_envs": 2}, "budget": 64}],
        **extra,
    )
    return source, config


@pytest.mark.slow
def test_a_two_stage_chain_runs_end_to_end(tmp_path) -> None:
    source, config = doorkey_chain(tmp_path, freeze=["mlp_extractor.policy_net.0"])
    result = rltransfer.transfer(config, progress_bar=False, verbose=False)
    stage_dir = result.run_dir / "chain" / "1-DoorKey6x6"
    assert [stage["env"] for stage in result.chain] == ["rltransfer/DoorKey6x6-v1"]
    assert (stage_dir / "best_model.zip").is_file() and result.chain[0]["timesteps"] >= 64
    stage_record = load_source(stage_dir)
    final_source = RunRecord.read(result.run_dir).get("source")
    assert final_source == str(stage_dir / "best_model.zip")  # the last stage starts from the stage's result
    # the frozen first layer went through both stages untouched
    first = load_source(source.run_dir).state_dict["mlp_extractor.policy_net.0.weight"]
    assert torch.equal(stage_record.state_dict["mlp_extractor.policy_net.0.weight"], first)
    assert torch.equal(load_source(result.run_dir).state_dict["mlp_extractor.policy_net.0.weight"], first)
    assert result.frozen_unchanged is True and result.timesteps >= 64


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ([None], r"`chain.0` is invalid"),
        ([{"budget": 100}], r"`chain.0.env` is required but missing"),
        ([{"env": {"id": "rltransfer/DoorKey6x6-v1"}}], r"`chain.0.budget` is required but missing"),
        (
            [{"env": {"id": "rltransfer/DoorKey7x7-v1"}, "budget": 100}],
            r"`chain.0.env.id` 'rltransfer/DoorKey7x7-v1' is not a registered",
        ),
        (
            [{"env": {"id": "rltransfer/DoorKey6x6-v1", "context": {"size": 40}}, "budget": 100}],
            r"`chain.0.env.context.size` = 40 is outside",
        ),
    ],
)
def test_a_bad_chain_is_refused_before_anything_trains(tmp_path, chain, message) -> None:
    config = run_config(
        tmp_path, "bad-chain", "rltransfer/DoorKey8x8-v1", source=str(tmp_path / "nothing"), chain=chain
    )
    with pytest.raises(rltransfer.ConfigError, match=message):
        rltransfer.transfer(config, progress_bar=False, verbose=False)
    assert not (tmp_path / "runs" / "bad-chain").exists()


@pytest.mark.slow
def test_atari_smoke_nature_cnn_and_a_new_head(tmp_path) -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    agent = {"algo": "ppo", "hyperparams": {"n_steps": 8, "batch_size": 8, "n_epochs": 1}}
    config = run_config(tmp_path, "pong", "rltransfer/AtariPong-v1", budget=16, agent=agent)
    config["env"]["n_envs"] = 1
    config["eval"] = {"every": 16, "episodes": 1, "patience": None}
    source = rltransfer.train(config, progress_bar=False)
    train_env, _ = make_envs(EnvConfig(id="rltransfer/AtariBreakout-v1", n_envs=1), seed=0)
    target = build_agent(AgentConfig.model_validate(agent), train_env, seed=0, device="cpu")
    assert type(target.policy.features_extractor).__name__ == "NatureCNN"
    mapping = map_weights(load_source(source.run_dir).state_dict, target.policy)
    assert mapping.reinitialised["action_net"]["reason"] == "new head: 6 -> 4 outputs"
    assert {"features_extractor.cnn.0", "features_extractor.linear.0", "value_net"} <= set(mapping.copied)


def test_a_transfer_run_is_a_source_with_its_agent(breakout_source, tmp_path) -> None:
    """A transfer that took its source's agent passes that agent on (chains rely on it): same hyperparameters."""
    first = rltransfer.transfer(
        run_config(tmp_path, "first", "rltransfer/MinAtarAsterix-v1", source=str(breakout_source)),
        progress_bar=False,
        verbose=False,
    )
    assert load_source(first.run_dir).agent == AgentConfig.model_validate(CNN_AGENT)


@pytest.mark.slow
def test_an_interrupted_chain_resumes_reusing_its_finished_stages(tmp_path, monkeypatch, capsys) -> None:
    import signal

    import rltransfer.rl.transfer as transfers
    from rltransfer.core.interrupt import Interrupted

    _, config = doorkey_chain(tmp_path)
    real = transfers._transfer_stage

    def stopped_before_the_last_stage(config, run_dir, *args, first, **kwargs):
        if not first and config.chain:  # the final stage of the chain (stages themselves carry no chain)
            raise Interrupted(signal.SIGTERM, run_dir or "", "transfer")
        return real(config, run_dir, *args, first=first, **kwargs)

    monkeypatch.setattr(transfers, "_transfer_stage", stopped_before_the_last_stage)
    with pytest.raises(Interrupted) as stop:
        rltransfer.transfer(config, progress_bar=False, verbose=False)
    run_dir = tmp_path / "runs" / "chain"
    assert "Continue with: rltransfer transfer --resume" in str(stop.value)
    stage_model = run_dir / "chain" / "1-DoorKey6x6" / "best_model.zip"
    stamp = stage_model.stat().st_mtime_ns
    monkeypatch.setattr(transfers, "_transfer_stage", real)
    capsys.readouterr()
    result = rltransfer.transfer(progress_bar=False, verbose=True, resume=run_dir)
    assert "reusing the finished stage" in capsys.readouterr().out
    assert stage_model.stat().st_mtime_ns == stamp  # not retrained
    assert result.run_dir == run_dir and result.chain[0]["timesteps"] >= 64 and result.timesteps >= 64


def test_atari_context_reaches_the_emulator_and_evaluation_scores_are_unclipped() -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    env = gym.make("rltransfer/AtariPong-v1", frame_skip=2, repeat_action_probability=0.0)
    env.reset(seed=0)
    ale = env.unwrapped.inner.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.0
    start = ale.getEpisodeFrameNumber()
    env.step(0)
    assert ale.getEpisodeFrameNumber() - start == 2  # two emulator frames per agent step
    train_env, eval_env = make_envs(EnvConfig(id="rltransfer/AtariBreakout-v1", n_envs=1), seed=0)
    assert train_env.envs[0].unwrapped.context["clip_reward"] == 1.0
    assert eval_env.envs[0].unwrapped.context["clip_reward"] == 0.0
