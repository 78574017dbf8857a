"""Build an SB3 agent from an :class:`~rltransfer.agents.config.AgentConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.utils import FloatSchedule, LinearSchedule
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from rltransfer.agents.algorithms import ALGORITHMS
from rltransfer.agents.config import AgentConfig
from rltransfer.agents.dropout import add_dropout
from rltransfer.agents.extractors import extractor_kwargs
from rltransfer.agents.freezing import rebuild_optimizers
from rltransfer.agents.trunks import SourceTrunks
from rltransfer.core.errors import ConfigError
from rltransfer.core.optim import optimizer_class

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def policy_name(observation_space: spaces.Space) -> str:
    """SB3's policy alias for an observation space."""
    if isinstance(observation_space, spaces.Dict):
        return "MultiInputPolicy"
    if is_image_space(observation_space, check_channels=False):
        return "CnnPolicy"
    return "MlpPolicy"


def optimizer_settings(agent: AgentConfig) -> tuple[type, dict[str, Any]]:
    """The optimizer class and keyword arguments, keeping SB3's defaults for whatever the user left unset."""
    spec = ALGORITHMS[agent.algo]
    settings = agent.optimizer
    name = settings.name or spec.default_optimizer
    kwargs: dict[str, Any] = dict(spec.default_optimizer_kwargs) if name == spec.default_optimizer else {}
    if name == "adam" and agent.algo in ("ppo", "a2c"):
        kwargs.setdefault("eps", 1e-5)  # SB3's ActorCriticPolicy default for Adam
    if settings.weight_decay and settings.decay_to == "zero":  # toward the source: SourcePenalty applies it
        kwargs["weight_decay"] = settings.weight_decay
    if settings.eps is not None:
        if name == "sgd":
            raise ConfigError(
                "`agent.optimizer.eps` does not apply to SGD; remove it or choose another optimizer."
            )
        kwargs["eps"] = settings.eps
    if settings.momentum is not None:
        if name not in ("sgd", "rmsprop"):
            raise ConfigError(
                f"`agent.optimizer.momentum` applies to sgd and rmsprop, not {name}; remove it."
            )
        kwargs["momentum"] = settings.momentum
    return optimizer_class(name), kwargs


def policy_kwargs(agent: AgentConfig, observation_space: spaces.Space | None = None) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for the configured network, feature extractor and optimizer."""
    cls, kwargs = optimizer_settings(agent)
    result: dict[str, Any] = {"optimizer_class": cls, "optimizer_kwargs": kwargs}
    policy = agent.policy
    if policy.trunks is not None:  # sources' trunks side by side (a transfer's `combine`)
        result["features_extractor_class"] = SourceTrunks
        result["features_extractor_kwargs"] = {"trunks": [trunk.model_dump() for trunk in policy.trunks]}
    elif observation_space is not None:
        result.update(extractor_kwargs(policy.features, policy.features_dim, observation_space))
    if policy.hidden is not None:
        result["net_arch"] = policy.hidden
    if policy.activation is not None:
        result["activation_fn"] = ACTIVATIONS[policy.activation]
    if policy.ortho_init is not None:
        if agent.algo not in ("ppo", "a2c"):
            raise ConfigError(
                f"`agent.policy.ortho_init` applies to ppo and a2c, not {agent.algo}; remove it."
            )
        result["ortho_init"] = policy.ortho_init
    return result


def build_agent(agent: AgentConfig, env: VecEnv, *, seed: int, device: str = "auto") -> BaseAlgorithm:
    """A freshly initialised agent for `env`: network, dropout, optimizer over trainable weights, schedule."""
    spec = ALGORITHMS[agent.algo]
    if not isinstance(env.action_space, spec.action_spaces):
        kinds = ", ".join(space.__name__ for space in spec.action_spaces)
        raise ConfigError(
            f"`agent.algo` {agent.algo} needs {kinds} actions, but the env's actions are {env.action_space}. "
            "Choose ppo or a2c (any action space), dqn (discrete) or sac/td3 (continuous)."
        )
    lr = spec.default_lr if agent.optimizer.lr is None else agent.optimizer.lr
    schedule = linear_schedule(lr) if agent.optimizer.schedule == "linear" else constant_schedule(lr)
    consistent = agent.policy.consistent_dropout and agent.policy.dropout > 0
    dict_observations = isinstance(env.observation_space, spaces.Dict)
    if consistent and spec.on_policy and dict_observations:
        raise ConfigError(
            "Consistent dropout supports array observations, not Dict ones; "
            "set `agent.policy.consistent_dropout: false` or `agent.policy.dropout: 0`."
        )
    # PPO/A2C on array observations: consistent dropout masks and a frozen trunk computed once per rollout
    cls = spec.sb3_cls if dict_observations else spec.cls
    try:
        model = cls(
            policy_name(env.observation_space),
            env,
            learning_rate=schedule,
            policy_kwargs=policy_kwargs(agent, env.observation_space),
            seed=seed,
            device=device,
            verbose=0,
            **agent.hyperparams,
        )
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"SB3 rejected the agent settings for {agent.algo.upper()}: {error}. "
            "Check `agent.hyperparams` and `agent.policy` in the config."
        ) from None
    add_dropout(model.policy, agent.policy.dropout)
    if not consistent and hasattr(model, "consistent_dropout"):
        model.consistent_dropout = False  # plain dropout: fresh masks in every minibatch
    rebuild_optimizers(model, l1=agent.optimizer.l1)
    return model


def constant_schedule(value: float) -> Callable[[float], float]:
    """SB3 schedule returning `value` throughout (a picklable SB3 class, so saved agents load without rltransfer)."""
    return FloatSchedule(value)


def linear_schedule(start: float, end: float = 0.0) -> Callable[[float], float]:
    """SB3 schedule decaying linearly from `start` to `end` over training."""
    return LinearSchedule(start, end, 1.0)
