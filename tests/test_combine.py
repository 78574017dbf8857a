"""Two sources at once: their trunks frozen side by side, their features concatenated under new layers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import rltransfer
from rltransfer.agents.trunks import SourceTrunk, SourceTrunks, source_trunk
from rltransfer.core.config import parse_config
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.core.record import RunRecord
from rltransfer.rl.combine import trunk_of
from rltransfer.rl.sources import load_source


@pytest.fixture(scope="module")
def dqn_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain SB3 DQN zip (untrained, random weights) with its own hidden sizes, for CartPole."""
    path = tmp_path_factory.mktemp("dqn") / "dqn.zip"
    DQN("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs={"net_arch": [16, 8]}, seed=3, device="cpu").save(
        path
    )
    return path


def _combined(tiny_transfer: dict[str, Any], first: Path, second: Path, **extra: Any) -> dict[str, Any]:
    config = copy.deepcopy(tiny_transfer)
    config.update(source=str(first), combine={"source": str(second), "hidden": [32]}, **extra)
    return config


def _observations(n: int = 16) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(0).normal(size=(n, 4)), dtype=torch.float32)


def test_a_ppo_trunk_computes_the_source_s_actor_latent_exactly(tiny_source: Path) -> None:
    source = load_source(tiny_source)
    spec, state = trunk_of(source)
    trunk = SourceTrunk(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), spec)
    trunk.load_state_dict(state)
    policy = PPO.load(tiny_source / "best_model.zip", device="cpu").policy
    obs = _observations()
    with torch.no_grad():
        expected = policy.mlp_extractor.forward_actor(
            policy.extract_features(obs, policy.pi_features_extractor)
        )
        assert torch.equal(trunk(obs), expected)
    assert spec.activation == "tanh" and spec.hidden == [int(expected.shape[1])] * len(spec.hidden)


def test_a_dqn_trunk_is_its_q_network_without_the_output_layer(dqn_zip: Path) -> None:
    spec, state = trunk_of(load_source(dqn_zip))
    assert spec.hidden == [16, 8] and spec.activation == "relu"
    trunk = SourceTrunk(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), spec)
    trunk.load_state_dict(state)
    q_net = DQN.load(dqn_zip, device="cpu").q_net
    obs = _observations()
    with torch.no_grad():
        assert torch.equal(
            trunk(obs), q_net.q_net[:-1](q_net.extract_features(obs, q_net.features_extractor))
        )


def test_a_source_s_observation_statistics_stay_inside_its_trunk(tmp_path: Path) -> None:
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]), norm_reward=False, clip_obs=2.0)
    venv.obs_rms.mean = np.array([0.5, -1.0, 0.1, 0.0])
    venv.obs_rms.var = np.array([4.0, 0.25, 1.0, 9.0])
    model = PPO("MlpPolicy", venv, seed=0, device="cpu")
    model.save(tmp_path / "normalized.zip")
    venv.save(tmp_path / "vec_normalize.pkl")
    source = load_source(tmp_path / "normalized.zip")
    assert source.scaling is not None
    spec, state = trunk_of(source)
    assert spec.scaled and spec.clip == 2.0
    trunk = SourceTrunk(venv.observation_space, spec)
    trunk.load_state_dict(state)
    raw = _observations() * 3
    with torch.no_grad():
        scaled = torch.as_tensor(venv.normalize_obs(raw.numpy()), dtype=torch.float32)
        expected = model.policy.mlp_extractor.forward_actor(scaled)
        assert torch.allclose(trunk(raw), expected, atol=1e-6)


def test_two_sources_train_a_new_head_and_stay_frozen(
    tiny_transfer, tiny_source: Path, dqn_zip: Path
) -> None:
    result = rltransfer.transfer(_combined(tiny_transfer, tiny_source, dqn_zip), progress_bar=False)
    assert result.frozen_unchanged is True
    mapping = result.mapping
    assert set(mapping.copied) == {
        "features_extractor.trunks.0.layers.0", "features_extractor.trunks.0.layers.1",
        "features_extractor.trunks.1.layers.0", "features_extractor.trunks.1.layers.1",
    }  # fmt: skip
    assert {info["reason"] for info in mapping.reinitialised.values()} == {"new layer on the combined trunks"}
    trained = PPO.load(result.run_dir / "last_model.zip", device="cpu").policy
    extractor = trained.features_extractor
    assert isinstance(extractor, SourceTrunks) and extractor.features_dim == 16 + 8
    for trunk, path in zip(extractor.trunks, (tiny_source, dqn_zip), strict=True):
        _, state = trunk_of(load_source(path))
        assert all(torch.equal(trunk.state_dict()[key], value) for key, value in state.items())
    assert trained.mlp_extractor.policy_net[0].weight.shape == (32, 24)
    # the run is rebuilt from its config and evaluated like any other
    evaluation = rltransfer.evaluate(result.run_dir, episodes=2, device="cpu")
    assert len(evaluation.returns) == 2


def test_the_head_learns_while_the_trunks_do_not(tiny_transfer, tiny_source: Path, dqn_zip: Path) -> None:
    result = rltransfer.transfer(_combined(tiny_transfer, tiny_source, dqn_zip), progress_bar=False)
    start = rltransfer.transfer(_combined(tiny_transfer, tiny_source, dqn_zip, name="start", budget=256,
                                          eval={"every": 256, "episodes": 2, "patience": None}),
                                progress_bar=False)  # fmt: skip
    before = PPO.load(start.run_dir / "best_model.zip", device="cpu").policy.state_dict()
    after = PPO.load(result.run_dir / "last_model.zip", device="cpu").policy.state_dict()
    assert not torch.equal(before["action_net.weight"], after["action_net.weight"])
    assert torch.equal(
        before["features_extractor.trunks.1.layers.0.weight"],
        after["features_extractor.trunks.1.layers.0.weight"],
    )


def test_the_frozen_trunks_run_once_per_rollout(tiny_transfer, tiny_source: Path, dqn_zip: Path) -> None:
    from rltransfer.agents.builder import build_agent
    from rltransfer.rl.combine import combined_agent, load_and_freeze
    from rltransfer.rl.config import EnvConfig
    from rltransfer.rl.environment import make_envs
    from rltransfer.rl.sources import source_agent_config

    sources = [load_source(tiny_source), load_source(dqn_zip)]
    settings = rltransfer.TransferConfig.model_validate(
        _combined(tiny_transfer, tiny_source, dqn_zip)
    ).combine
    agent, states = combined_agent(source_agent_config(sources[0]), sources, settings)
    env, _ = make_envs(EnvConfig(id="CartPole-v1", n_envs=4), 0)
    model = build_agent(agent, env, seed=0, device="cpu")
    load_and_freeze(model, states, sources, [])
    seen: list[int] = []
    model.policy.features_extractor.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    model.learn(model.n_steps * 4)  # one rollout of 4 envs, then n_epochs of minibatches
    rollout = model.n_steps * 4
    # acting (one env step at a time) plus one batched pass over the rollout: never once per epoch
    assert sum(seen) == rollout + 4 + rollout  # 4: the value of the last observations
    assert model.n_epochs > 1


def test_a_second_source_for_other_observations_is_named(
    tiny_transfer, tiny_source: Path, tmp_path: Path
) -> None:
    acrobot = tmp_path / "acrobot.zip"
    PPO("MlpPolicy", gym.make("Acrobot-v1"), seed=0, device="cpu").save(acrobot)
    with pytest.raises(
        TransferError, match=r"The trunk of .*acrobot\.zip does not fit the target's observations"
    ):
        rltransfer.transfer(_combined(tiny_transfer, tiny_source, acrobot), progress_bar=False)
    assert not (Path(tiny_transfer["log_root"]) / "tiny-transfer").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"layer_map": {"action_net": "action_net"}}, "`layer_map` does not apply with `combine`"),
        ({"reinit": ["action_net"]}, "`reinit` does not apply with `combine`"),
        ({"agent": {"kickstart": {"weight": 1.0}}}, "`agent.kickstart` learns from one source's own network"),
    ],
)
def test_what_combine_replaces_is_refused(tiny_transfer, tiny_source, dqn_zip, extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        rltransfer.transfer(_combined(tiny_transfer, tiny_source, dqn_zip, **extra), progress_bar=False)


def test_combine_settings_are_checked_naming_the_key(tiny_transfer, tiny_source: Path, dqn_zip: Path) -> None:
    config = _combined(tiny_transfer, tiny_source, dqn_zip)
    config["combine"]["hiden"] = [8]
    with pytest.raises(ConfigError, match="combine.hiden"):
        parse_config(config, rltransfer.TransferConfig, "t.yaml")
    config["combine"] = {"source": str(dqn_zip), "hidden": [0]}
    with pytest.raises(ConfigError, match="combine.hidden"):
        parse_config(config, rltransfer.TransferConfig, "t.yaml")


def test_trunks_are_refused_where_no_transfer_fills_them(tiny_train: dict[str, Any], dqn_zip: Path) -> None:
    spec, _ = trunk_of(load_source(dqn_zip))
    config = copy.deepcopy(tiny_train)
    config["agent"]["policy"]["trunks"] = [spec.model_dump()]
    with pytest.raises(ConfigError, match="`agent.policy.trunks` holds sources' trunks"):
        rltransfer.train(config, progress_bar=False)


def test_a_combined_run_cannot_be_combined_again(tiny_transfer, tiny_source: Path, dqn_zip: Path) -> None:
    result = rltransfer.transfer(_combined(tiny_transfer, tiny_source, dqn_zip), progress_bar=False)
    source = load_source(result.run_dir)
    with pytest.raises(TransferError, match="already combines several trunks"):
        source_trunk(source.state_dict, "ppo", None)


def test_a_study_compares_two_sources_as_a_strategy(tiny_source: Path, dqn_zip: Path, tmp_path: Path) -> None:
    from rltransfer.study.plan import config_fingerprint

    config = {
        "name": "combine",
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {"path": str(tiny_source)},
        "targets": [{"id": "rltransfer/CartPoleLongPole-v1", "label": "LongPole"}],
        "strategies": [{"name": "two-sources", "combine": {"source": str(dqn_zip), "hidden": [16]}}],
        "seeds": 1,
        "budget": 512,
        "eval": {"every": 256, "episodes": 2},
    }
    report = rltransfer.run_study(config, workers=1, progress=False)
    record = RunRecord.read(report.study_dir / "runs" / "LongPole" / "two-sources" / "seed0").data
    assert record["combine_source"] == str(dqn_zip)
    assert "features_extractor.trunks.1.layers.0" in record["mapping"]["copied"]
    text = report.report_md.read_text(encoding="utf-8")
    assert f"`two-sources`: the source's and {dqn_zip}'s trunks frozen side by side" in text
    assert "concatenated under new layers [16] and new heads" in text
    assert not report.failed
    # runs without `combine` keep the fingerprints they had before it existed
    plain = {"kind": "train", "agent": {"algo": "ppo", "policy": {"hidden": [64]}}, "budget": 1}
    assert config_fingerprint(plain) == config_fingerprint(
        {**plain, "combine": None, "agent": {"algo": "ppo", "policy": {"hidden": [64], "trunks": None}}}
    )


def test_a_study_strategy_with_a_second_source_that_does_not_fit_fails_before_any_run(
    tiny_source: Path, tmp_path: Path
) -> None:
    acrobot = tmp_path / "acrobot.zip"
    PPO("MlpPolicy", gym.make("Acrobot-v1"), seed=0, device="cpu").save(acrobot)
    config = {
        "name": "combine",
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {"path": str(tiny_source)},
        "targets": [{"id": "rltransfer/CartPoleLongPole-v1"}],
        "strategies": [{"name": "two", "combine": {"source": str(acrobot)}}],
        "seeds": 1,
        "budget": 512,
        "eval": {"every": 256, "episodes": 2},
    }
    with pytest.raises(
        ConfigError, match=r"`strategies` two\.combine: The trunk of .*acrobot\.zip does not fit"
    ):
        rltransfer.run_study(config, workers=1, progress=False)
    assert not (tmp_path / "runs" / "combine").exists()


def test_a_combined_transfer_resumes_and_checks_its_second_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_transfer, tiny_source: Path
) -> None:
    import shutil
    import signal

    from rltransfer.core.interrupt import Interrupted
    from rltransfer.rl import callbacks

    second = tmp_path / "second.zip"
    DQN("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs={"net_arch": [8]}, seed=0, device="cpu").save(
        second
    )
    calls = iter(range(1000))
    monkeypatch.setattr(callbacks, "stop_requested", lambda: signal.SIGTERM if next(calls) >= 70 else None)
    with pytest.raises(Interrupted) as stop:
        rltransfer.transfer(_combined(tiny_transfer, tiny_source, second), progress_bar=False, verbose=False)
    monkeypatch.setattr(callbacks, "stop_requested", lambda: None)
    shutil.copy(second, tmp_path / "kept.zip")
    DQN("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs={"net_arch": [8]}, seed=1, device="cpu").save(
        second
    )
    with pytest.raises(ConfigError, match=r"second.zip changed after .* started from it"):
        rltransfer.transfer(resume=stop.value.run_dir, progress_bar=False, verbose=False)
    shutil.copy(tmp_path / "kept.zip", second)
    result = rltransfer.transfer(resume=stop.value.run_dir, progress_bar=False, verbose=False)
    assert result.frozen_unchanged is True and result.timesteps >= 512
    assert "features_extractor.trunks.1.layers.0" in result.mapping.copied
