"""A frozen trunk computed once per rollout: the same update as without the reuse, and only where it holds."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from rltransfer.agents import ConsistentA2C, ConsistentPPO, SmallCNN, build_agent
from rltransfer.agents.config import AgentConfig
from rltransfer.agents.freezing import freeze_agent, trunk_layers
from rltransfer.agents.trunk_cache import frozen_trunk

MINATAR = "rltransfer/MinAtarBreakout-v1"
HYPER = {"n_steps": 64, "batch_size": 32, "n_epochs": 3}


def _cnn_agent(cache: bool, **policy) -> ConsistentPPO:
    env = make_vec_env(MINATAR, n_envs=2, seed=0)
    config = AgentConfig.model_validate(
        {"algo": "ppo", "hyperparams": HYPER, "policy": {"features": "small_cnn", "hidden": [32], **policy}}
    )
    model = build_agent(config, env, seed=0, device="cpu")
    model.cache_frozen_trunk = cache
    return model


def _separate_extractors_agent(cache: bool) -> ConsistentPPO:
    env = make_vec_env(MINATAR, n_envs=2, seed=0)
    model = ConsistentPPO(
        "CnnPolicy",
        env,
        seed=0,
        device="cpu",
        policy_kwargs={
            "features_extractor_class": SmallCNN,
            "normalize_images": False,
            "share_features_extractor": False,
            "net_arch": [32],
        },
        **HYPER,
    )
    model.cache_frozen_trunk = cache
    return model


def _mlp_agent(cache: bool) -> ConsistentPPO:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    config = AgentConfig.model_validate({"algo": "ppo", "hyperparams": HYPER, "policy": {"hidden": [32, 32]}})
    model = build_agent(config, env, seed=0, device="cpu")
    model.cache_frozen_trunk = cache
    return model


def _a2c_agent(cache: bool) -> ConsistentA2C:
    env = make_vec_env(MINATAR, n_envs=2, seed=0)
    config = AgentConfig.model_validate(
        {"algo": "a2c", "hyperparams": {"n_steps": 8}, "policy": {"features": "small_cnn", "hidden": [32]}}
    )
    model = build_agent(config, env, seed=0, device="cpu")
    model.cache_frozen_trunk = cache
    return model


BUILDERS = {
    "small-cnn": _cnn_agent,
    "separate-extractors": _separate_extractors_agent,
    "mlp-first-layers": _mlp_agent,
    "a2c-small-cnn": _a2c_agent,
}


def _one_update(build, cache: bool) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """Parameters and logged losses after one rollout and one update, and how many samples went through the
    extractor during the update."""
    model = build(cache)
    freeze_agent(model, trunk_layers(model.policy))
    extractor = (
        model.policy.features_extractor
        if model.policy.share_features_extractor
        else model.policy.pi_features_extractor
    )
    counted = {"on": False, "samples": 0}

    def count(_module, inputs) -> None:
        if counted["on"]:
            counted["samples"] += inputs[0].shape[0]

    extractor.register_forward_pre_hook(count)
    train = model.train

    def counting_train() -> None:
        counted["on"] = True
        try:
            train()
        finally:
            counted["on"] = False

    model.train = counting_train
    model.learn(model.n_steps * model.n_envs)  # one rollout, one update
    losses = {key: value for key, value in model.logger.name_to_value.items() if key.startswith("train/")}
    params = {name: param.detach().clone() for name, param in model.policy.named_parameters()}
    return params, losses, counted["samples"]


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_the_update_is_the_same_with_the_trunk_computed_once(case: str) -> None:
    build = BUILDERS[case]
    cached, cached_losses, cached_samples = _one_update(build, cache=True)
    plain, plain_losses, plain_samples = _one_update(build, cache=False)
    assert cached.keys() == plain.keys()
    for name in cached:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert cached_losses.keys() == plain_losses.keys() and cached_losses
    for key in cached_losses:
        assert cached_losses[key] == pytest.approx(plain_losses[key], rel=1e-4, abs=1e-6), key
    rollout = 2 * (64 if case != "a2c-small-cnn" else 8)
    if case == "mlp-first-layers":  # the flatten extractor has no weights: counted for the record only
        assert cached_samples == rollout
    elif case == "a2c-small-cnn":  # one pass over the rollout either way
        assert cached_samples == plain_samples == rollout
    else:
        assert cached_samples == rollout  # once per rollout
        assert plain_samples == 3 * rollout  # once per epoch


def test_what_is_cached_is_the_frozen_front() -> None:
    model = _mlp_agent(cache=True)
    assert frozen_trunk(model.policy) is None  # nothing frozen
    freeze_agent(model, ["mlp_extractor.policy_net.0"])
    trunk = frozen_trunk(
        model.policy
    )  # the actor's frozen front is cached, the critic reads the observations
    assert trunk is not None and (trunk.actor_skip, trunk.critic_skip) == (2, 0)
    freeze_agent(model, ["mlp_extractor.value_net.0"])
    trunk = frozen_trunk(model.policy)
    assert trunk is not None and (trunk.actor_skip, trunk.critic_skip) == (2, 2)  # Linear + Tanh each
    cnn = _cnn_agent(cache=True)
    freeze_agent(cnn, ["features_extractor"])
    trunk = frozen_trunk(cnn.policy)
    assert trunk is not None and trunk.shared and (trunk.actor_skip, trunk.critic_skip) == (0, 0)


def test_a_trunk_with_dropout_or_batch_norm_is_not_cached() -> None:
    class NoisyCNN(SmallCNN):
        def __init__(self, observation_space, features_dim: int = 32, layer: type[nn.Module] = nn.Dropout):
            super().__init__(observation_space, features_dim)
            self.noise = layer(features_dim) if layer is nn.BatchNorm1d else layer(0.5)

        def forward(self, observations: torch.Tensor) -> torch.Tensor:
            return self.noise(super().forward(observations))

    for layer in (nn.Dropout, nn.BatchNorm1d):
        env = make_vec_env(MINATAR, n_envs=2, seed=0)
        model = ConsistentPPO(
            "CnnPolicy",
            env,
            seed=0,
            device="cpu",
            policy_kwargs={
                "features_extractor_class": NoisyCNN,
                "features_extractor_kwargs": {"layer": layer},
                "normalize_images": False,
            },
            **HYPER,
        )
        freeze_agent(model, ["features_extractor"])
        assert frozen_trunk(model.policy) is None, layer


def test_consistent_dropout_in_the_head_still_starts_at_ratio_one() -> None:
    """Old log-probabilities recomputed under each sample's mask from the cached outputs: with learning rate 0
    the ratio is exactly 1 in every minibatch (SB3's approximate KL is exactly 0, nothing clipped)."""
    model = _cnn_agent(cache=True, dropout=0.5)
    model.policy.optimizer.param_groups[0]["lr"] = 0.0
    model.lr_schedule = lambda _progress: 0.0
    freeze_agent(model, ["features_extractor"])
    assert frozen_trunk(model.policy) is not None
    model.learn(model.n_steps * model.n_envs)
    assert model.logger.name_to_value["train/approx_kl"] == 0.0
    assert model.logger.name_to_value["train/clip_fraction"] == 0.0


def test_frozen_trunk_stays_bit_identical_and_the_policy_is_restored() -> None:
    model = _cnn_agent(cache=True)
    freeze_agent(model, ["features_extractor"])
    before = {k: v.clone() for k, v in model.policy.features_extractor.state_dict().items()}
    model.learn(2 * model.n_steps * model.n_envs)
    after = model.policy.features_extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "evaluate_actions" not in vars(model.policy)  # SB3's own method again outside the update
    assert model.rollout_buffer.trunk_features is None


def test_the_benchmark_times_both_updates_and_finds_them_equal(tmp_path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "frozen_trunk.py"
    out = tmp_path / "frozen_trunk.json"
    argv = [str(script), "--pairs", "1", "--only", "minatar-small-cnn", "--out", str(out)]
    saved, sys.argv = sys.argv, argv
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
    assert exit_info.value.code == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["frozen"][0] == "features_extractor" and result["samples"] == 8 * 128
    assert len(result["seconds_trunk_once"]) == len(result["seconds_trunk_every_minibatch"]) == 1
    assert len(result["seconds_trunk_forward_once"]) == 1 and result["speedup_bound"] > 0
    assert result["max_weight_difference"] <= 1e-6 and result["speedup"] > 0
