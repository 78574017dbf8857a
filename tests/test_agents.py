"""Agents built from config: algorithms, optimizers with SB3's defaults kept, dropout and consistent dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from rltransfer.agents import ALGORITHMS, MaskedDropout, build_agent, dropout_layers
from rltransfer.agents.config import AgentConfig
from rltransfer.core.errors import ConfigError
from rltransfer.core.optim import L1Penalty


def make_agent(algo: str = "ppo", env_id: str = "CartPole-v1", **settings):
    env = make_vec_env(env_id, n_envs=2, seed=0)
    hyper = {"ppo": {"n_steps": 32, "batch_size": 32, "n_epochs": 2}, "a2c": {"n_steps": 8}}.get(
        algo, {"learning_starts": 0, "buffer_size": 1000}
    )
    config = AgentConfig.model_validate({"algo": algo, "hyperparams": hyper, **settings})
    return build_agent(config, env, seed=0, device="cpu")


@pytest.mark.parametrize(
    ("algo", "env_id"),
    [
        ("ppo", "CartPole-v1"),
        ("a2c", "CartPole-v1"),
        ("dqn", "CartPole-v1"),
        ("sac", "Pendulum-v1"),
        ("td3", "Pendulum-v1"),
    ],
)
def test_every_algorithm_builds_with_dropout_and_learns(algo: str, env_id: str) -> None:
    model = make_agent(algo, env_id, policy={"hidden": [16, 16], "dropout": 0.3, "activation": "relu"})
    assert isinstance(model, ALGORITHMS[algo].sb3_cls)
    assert len(dropout_layers(model.policy)) >= 2
    model.learn(64)
    assert model.num_timesteps >= 64


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad", "sgd"])
def test_optimizer_choice_weight_decay_and_l1(name: str) -> None:
    model = make_agent(optimizer={"name": name, "lr": 0.01, "weight_decay": 0.001, "l1": 0.0001})
    optimizer = model.policy.optimizer
    assert type(optimizer).__name__.lower() == name
    assert optimizer.defaults["weight_decay"] == 0.001
    assert any(isinstance(hook, L1Penalty) for hook in optimizer._optimizer_step_pre_hooks.values())


def test_sb3_defaults_kept_when_only_some_options_are_set() -> None:
    # SB3 drops Adam's eps=1e-5 for actor-critic policies as soon as any optimizer option is given; we do not
    assert make_agent(optimizer={"weight_decay": 0.01}).policy.optimizer.defaults["eps"] == 1e-5
    assert make_agent().policy.optimizer.defaults["eps"] == 1e-5
    a2c = make_agent("a2c").policy.optimizer
    assert (
        isinstance(a2c, torch.optim.RMSprop) and a2c.defaults["alpha"] == 0.99 and a2c.defaults["eps"] == 1e-5
    )
    assert make_agent(optimizer={"eps": 1e-7}).policy.optimizer.defaults["eps"] == 1e-7


def test_linear_schedule_decays_learning_rate() -> None:
    model = make_agent(optimizer={"lr": 0.01, "schedule": "linear"})
    assert model.lr_schedule(1.0) == pytest.approx(0.01) and model.lr_schedule(0.25) == pytest.approx(0.0025)


def test_dropout_off_in_rollouts_and_evaluation_on_in_updates() -> None:
    model = make_agent(policy={"dropout": 0.5})
    phase = {"name": "other"}
    seen: list[tuple[str, bool]] = []

    def record(module, _inputs):
        seen.append((phase["name"], module.training))

    for layer in dropout_layers(model.policy):
        layer.register_forward_pre_hook(record)
    collect, update = model.collect_rollouts, model.train

    def collecting(*args, **kwargs):
        phase["name"] = "rollout"
        try:
            return collect(*args, **kwargs)
        finally:
            phase["name"] = "other"

    def updating():
        phase["name"] = "update"
        try:
            return update()
        finally:
            phase["name"] = "other"

    model.collect_rollouts, model.train = collecting, updating
    model.learn(128)
    phase["name"] = "evaluation"
    evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=1), n_eval_episodes=1)
    modes = {
        name: {training for seen_name, training in seen if seen_name == name}
        for name in ("rollout", "update", "evaluation")
    }
    assert modes == {"rollout": {False}, "update": {True}, "evaluation": {False}}


def _first_update_log_ratios(consistent: bool) -> list[torch.Tensor]:
    model = make_agent(policy={"dropout": 0.5, "consistent_dropout": consistent}, optimizer={"lr": 0.0})
    model.learn(1)  # sets up the buffer and logger, collects one rollout and updates once
    ratios: list[torch.Tensor] = []
    pending: list = []
    buffer, policy = model.rollout_buffer, model.policy
    get_samples, evaluate = buffer._get_samples, policy.evaluate_actions

    def spy_samples(indices, env=None):
        sample = get_samples(indices, env)
        pending.append(sample)
        return sample

    def spy_evaluate(observations, actions):
        values, log_prob, entropy = evaluate(observations, actions)
        if pending:
            ratios.append((log_prob - pending.pop().old_log_prob).detach())
        return values, log_prob, entropy

    buffer._get_samples, policy.evaluate_actions = spy_samples, spy_evaluate
    model.learn(64, reset_num_timesteps=False)
    return ratios


def test_consistent_dropout_ratio_is_exactly_one_before_any_step() -> None:
    ratios = _first_update_log_ratios(consistent=True)
    assert len(ratios) == 4  # 2 epochs x (64 samples / batch 32)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in ratios)
    plain = _first_update_log_ratios(consistent=False)
    assert any(r.abs().max() > 1e-3 for r in plain)  # plain dropout: ratio != 1 with nothing learnt


def test_models_with_dropout_save_and_load_with_plain_sb3(tmp_path) -> None:
    from stable_baselines3 import PPO

    model = make_agent(policy={"dropout": 0.2})
    model.save(tmp_path / "agent.zip")
    loaded = PPO.load(tmp_path / "agent.zip", device="cpu")
    for key, value in model.policy.state_dict().items():
        assert torch.equal(value, loaded.policy.state_dict()[key])
    assert not any(isinstance(m, MaskedDropout) for m in loaded.policy.modules())


def test_td3_action_squashing_gets_no_dropout() -> None:
    model = make_agent("td3", "Pendulum-v1", policy={"hidden": [16, 16], "dropout": 0.5})
    model.policy.set_training_mode(True)
    actions = model.policy.actor(torch.randn(256, 3))
    assert actions.abs().max() <= 1.0


def test_mask_bank_really_drops_units() -> None:
    from rltransfer.agents import MaskBank

    model = make_agent(policy={"dropout": 0.5})
    observations = torch.randn(8, 4)
    model.policy.set_training_mode(False)
    plain = model.policy.mlp_extractor.forward_actor(observations)
    model.policy.set_training_mode(True)
    with MaskBank(dropout_layers(model.policy), 8, torch.device("cpu")) as bank:
        bank.use(list(range(8)))
        masked = model.policy.mlp_extractor.forward_actor(observations)
        again = model.policy.mlp_extractor.forward_actor(observations)
    assert not torch.equal(plain, masked) and torch.equal(
        masked, again
    )  # masks applied, and the same each time


def test_a2c_with_adam_keeps_sb3_eps() -> None:
    assert make_agent("a2c", optimizer={"name": "adam"}).policy.optimizer.defaults["eps"] == 1e-5


def test_the_zoo_s_tuned_hyperparameters_become_the_agent(tmp_path) -> None:
    """`agent: {zoo: true}`: rl-baselines3-zoo's settings for the game, with the user's keys on top; what the
    zoo sets outside the agent is reported, not dropped in silence."""
    import warnings

    from rltransfer.core.config import load_config, parse_config
    from rltransfer.rl.config import TrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    # the shipped Acrobot source cites the zoo's DQN settings: the zoo table must give the same agent
    shipped = load_config(configs / "acrobot" / "source.yaml", TrainConfig)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        zoo = load_config(
            configs / "acrobot" / "source.yaml", TrainConfig, {"agent": {"algo": "dqn", "zoo": True}}
        )
    assert zoo.agent == shipped.agent
    assert any("n_timesteps 100000: set `budget` to match" in str(n.message) for n in notes)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = parse_config(
            {
                "name": "zoo-ppo", "log_root": str(tmp_path), "device": "cpu", "budget": 256,
                "env": {"id": "rltransfer/CartPoleLongPole-v1", "n_envs": 2}, "eval": {"every": 128, "episodes": 1},
                "agent": {"zoo": True, "hyperparams": {"n_epochs": 2}},
            },
            TrainConfig,
        )  # fmt: skip
    agent = config.agent
    assert agent.optimizer.lr == 0.001 and agent.optimizer.schedule == "linear"  # the zoo's lin_0.001
    assert agent.hyperparams["n_steps"] == 32 and agent.hyperparams["gae_lambda"] == 0.8
    assert agent.hyperparams["n_epochs"] == 2  # the user's key wins
    import rltransfer

    model = rltransfer.train(config, progress_bar=False).load_best(device="cpu")
    assert model.n_steps == 32 and model.gae_lambda == 0.8


def test_a_game_the_zoo_does_not_cover_is_named_with_what_it_has() -> None:
    from rltransfer.core.config import parse_config
    from rltransfer.rl.config import TrainConfig

    with pytest.raises(
        ConfigError, match=r"rl-baselines3-zoo 2.9.2 has no TD3 hyperparameters for rltransfer/CartPole-v1"
    ):
        parse_config(
            {
                "name": "x",
                "budget": 10,
                "env": {"id": "rltransfer/CartPole-v1"},
                "agent": {"algo": "td3", "zoo": True},
            },
            TrainConfig,
        )
    with pytest.raises(ConfigError, match="`agent.zoo` is 3; give true"):
        parse_config(
            {"name": "x", "budget": 10, "env": {"id": "rltransfer/CartPole-v1"}, "agent": {"zoo": 3}},
            TrainConfig,
        )
