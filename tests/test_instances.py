"""Instance transfer: the source's own transitions in a replay buffer of their own, mixed into the target's
batches with a share that decays to zero."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rltransfer
from rltransfer.core.errors import ConfigError

AGENT = {
    "algo": "dqn",
    "hyperparams": {"learning_starts": 0, "buffer_size": 5000, "train_freq": 4},
    "policy": {"hidden": [16]},
}


@pytest.fixture(scope="module")
def dqn_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dqn-source")
    config = {
        "name": "dqn-source", "seed": 0, "device": "cpu", "log_root": str(root), "budget": 512,
        "env": {"id": "rltransfer/CartPole-v1", "n_envs": 1}, "eval": {"every": 256, "episodes": 2, "patience": None},
        "agent": AGENT,
    }  # fmt: skip
    return rltransfer.train(config, progress_bar=False).run_dir


def _transfer_config(root: Path, source: Path, **transitions: Any) -> dict[str, Any]:
    return {
        "name": "with-source-transitions", "seed": 1, "device": "cpu", "log_root": str(root / "runs"),
        "budget": 512, "source": str(source), "env": {"id": "rltransfer/CartPoleLongPole-v1", "n_envs": 1},
        "eval": {"every": 256, "episodes": 2, "patience": None},
        "agent": {"source_transitions": {"steps": 300, "share": 0.5, **transitions}},
    }  # fmt: skip


def _model_with_transitions(dqn_source: Path, tmp_path: Path, **transitions: Any):
    """The target agent as the transfer builds it, with the source's transitions attached (no training)."""
    from rltransfer.agents.builder import build_agent
    from rltransfer.agents.config import inherit_agent
    from rltransfer.rl.config import TransferConfig
    from rltransfer.rl.environment import make_envs
    from rltransfer.rl.instances import attach_source_transitions
    from rltransfer.rl.mapping import map_weights
    from rltransfer.rl.sources import load_source, source_agent_config
    from rltransfer.rl.transfer import _source_game

    config = TransferConfig.model_validate(_transfer_config(tmp_path, dqn_source, **transitions))
    source = load_source(config.source)
    agent = inherit_agent(source_agent_config(source), config.agent)
    train_env, _ = make_envs(config.env, 1)
    model = build_agent(agent, train_env, seed=1, device="cpu")
    map_weights(source.state_dict, model.policy)
    buffer = attach_source_transitions(
        model, agent.source_transitions, source.state_dict, _source_game(source, agent), 1, config.budget
    )
    return model, buffer, source


def test_the_buffer_holds_the_source_s_transitions_on_its_own_game(dqn_source: Path, tmp_path: Path) -> None:
    model, buffer, source = _model_with_transitions(dqn_source, tmp_path)
    transitions = buffer.source
    assert transitions is not None and transitions.full and transitions.buffer_size == 300
    observations = transitions.observations[:300, 0]
    next_observations = transitions.next_observations[:300, 0]
    dones = transitions.dones[:300, 0].astype(bool)
    # one trajectory after another: each step starts where the last one ended, unless an episode ended
    assert np.allclose(next_observations[:-1][~dones[:-1]], observations[1:][~dones[:-1]])
    assert dones.any()
    # the source acted: its greedy actions, apart from the 5% random ones
    from stable_baselines3 import DQN

    greedy = DQN.load(source.path, device="cpu").predict(observations, deterministic=True)[0]
    agreement = float(np.mean(greedy == transitions.actions[:300, 0, 0]))
    assert agreement > 0.9
    assert buffer.pos == 0  # the target's own buffer starts empty
    again = _model_with_transitions(dqn_source, tmp_path)[1].source
    assert np.array_equal(again.observations, transitions.observations)  # seeded: the same on a resume


def test_batches_mix_in_a_share_that_decays_to_zero(dqn_source: Path, tmp_path: Path) -> None:
    model, buffer, _ = _model_with_transitions(dqn_source, tmp_path, decay_steps=1000)
    np.random.seed(0)
    only_source = buffer.sample(64)  # the target's buffer is empty: every sample is the source's
    assert buffer.drawn_from_source == 64 and only_source.observations.shape == (64, 4)
    for _ in range(200):  # some of the target's own transitions
        obs = np.full((1, 4), 7.0, dtype=np.float32)
        buffer.add(obs, obs, np.array([[0]]), np.array([1.0]), np.array([False]), [{}])
    buffer.drawn_from_source = 0
    model.num_timesteps = 0
    batch = buffer.sample(4000)
    own = (batch.observations == 7.0).all(dim=1)
    assert buffer.drawn_from_source == int((~own).sum())
    assert 0.45 < buffer.drawn_from_source / 4000 < 0.55  # share 0.5 at the start
    model.num_timesteps = 500
    buffer.drawn_from_source = 0
    buffer.sample(4000)
    assert 0.2 < buffer.drawn_from_source / 4000 < 0.3  # halfway through the decay: 0.25
    model.num_timesteps = 1000
    buffer.drawn_from_source = 0
    assert torch.all(buffer.sample(500).observations == 7.0) and buffer.drawn_from_source == 0


def test_a_dqn_transfer_trains_with_the_source_s_transitions(dqn_source: Path, tmp_path: Path) -> None:
    result = rltransfer.transfer(_transfer_config(tmp_path, dqn_source), progress_bar=False)
    assert result.run_dir.joinpath("best_model.zip").is_file()
    saved = rltransfer.load_config(result.run_dir / "config.yaml", rltransfer.TransferConfig)
    assert saved.agent is not None and saved.agent.source_transitions.steps == 300


def test_source_transitions_are_refused_where_they_cannot_apply(
    dqn_source: Path, tiny_source: Path, tmp_path: Path
) -> None:
    ppo = copy.deepcopy(_transfer_config(tmp_path, tiny_source))
    with pytest.raises(ConfigError, match="needs an off-policy agent"):
        rltransfer.transfer(ppo, progress_bar=False)
    zip_only = tmp_path / "plain.zip"
    zip_only.write_bytes((dqn_source / "best_model.zip").read_bytes())
    with pytest.raises(ConfigError, match="the game it was trained on is unknown"):
        rltransfer.transfer(_transfer_config(tmp_path, zip_only), progress_bar=False)
    other = _transfer_config(tmp_path, dqn_source, env="rltransfer/Acrobot-v1")
    with pytest.raises(ConfigError, match="cannot be replayed by the target"):
        rltransfer.transfer(other, progress_bar=False)
    assert not (tmp_path / "runs" / "with-source-transitions").exists()


def test_continuous_actions_are_stored_as_sac_stores_them() -> None:
    """SAC keeps actions scaled to [-1, 1] in its buffer; Pendulum's torques reach 2."""
    from stable_baselines3.common.env_util import make_vec_env

    from rltransfer.agents.builder import build_agent
    from rltransfer.agents.config import AgentConfig
    from rltransfer.rl.config import EnvConfig
    from rltransfer.rl.instances import collect_source_transitions

    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = build_agent(
        AgentConfig.model_validate({"algo": "sac", "hyperparams": {"buffer_size": 10}}), env, seed=0
    )
    buffer = collect_source_transitions(model, model.policy, EnvConfig(id="Pendulum-v1"), 200, seed=0)
    actions = buffer.actions[:200, 0, 0]
    assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() > 0.5
    torques = np.array([model.policy.unscale_action(np.array([a]))[0] for a in actions])
    assert np.abs(torques).max() > 1.0  # what the env was given: the same actions, unscaled
