"""The ``agent`` section of a config: algorithm, hyperparameters, network and optimizer, checked against SB3."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from rltransfer.agents.algorithms import ALGORITHMS
from rltransfer.core.config import Section, parse_config
from rltransfer.core.errors import ConfigError, did_you_mean, shown
from rltransfer.core.optim import OptimizerName

Activation = Literal["tanh", "relu", "elu", "leaky_relu", "gelu", "silu"]
Algo = Literal["ppo", "a2c", "dqn", "sac", "td3"]


class TrunkSpec(Section):
    """A source agent's trunk inside a combined feature extractor (written by a transfer's ``combine``)."""

    features: Literal["flatten", "nature_cnn", "small_cnn"] = "flatten"
    features_dim: int | None = Field(None, ge=1)
    hidden: list[int] = Field(default_factory=list)
    """Sizes of the source's hidden layers kept in the trunk."""
    activation: Activation = "tanh"
    scaled: bool = False
    """The source's VecNormalize observation statistics are applied inside the trunk."""
    clip: float = Field(10.0, gt=0.0)
    epsilon: float = Field(1e-8, gt=0.0)


class PolicyConfig(Section):
    """The policy network."""

    hidden: list[int] | dict[str, list[int]] | None = None
    """Hidden layer sizes, e.g. ``[64, 64]``, or ``{pi: [...], vf: [...]}`` / ``{pi, qf}``; null: SB3's default."""
    activation: Activation | None = None
    """Hidden activation; null: SB3's default (tanh for PPO/A2C, relu otherwise)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout after every hidden layer (0.2-0.5 is usual; 0 turns it off). Off while acting and evaluating."""
    consistent_dropout: bool = True
    """PPO/A2C: one mask per rollout sample for its old and new log-probabilities (the PPO ratio starts at 1)."""
    ortho_init: bool | None = None
    """PPO/A2C: orthogonal initialisation (SB3's default: true)."""
    features: Literal["auto", "flatten", "nature_cnn", "small_cnn"] = "auto"
    """Feature extractor: auto (SB3's choice: Nature-CNN for image frames, else flatten), nature_cnn (Atari), or
    small_cnn (one 3x3 conv + dense layer, for small channel-first grids such as MinAtar and MiniGrid)."""
    features_dim: int | None = Field(None, ge=1)
    """Output size of a CNN extractor (nature_cnn: 512, small_cnn: 128 by default)."""
    trunks: list[TrunkSpec] | None = None
    """Source trunks side by side as the feature extractor, their features concatenated (set by a transfer's
    ``combine``, which copies and freezes them; `hidden` then sizes the trainable layers above them)."""

    @field_validator("trunks")
    @classmethod
    def _trunks_replace_extractor(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not value:
            raise ValueError("trunks needs at least one trunk (or null)")
        if value is not None and (
            info.data.get("features", "auto") != "auto" or info.data.get("features_dim")
        ):
            raise ValueError(
                "trunks are the feature extractor: leave features at auto and features_dim unset"
            )
        return value

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, value: Any) -> Any:
        sizes = value if isinstance(value, list) else [s for v in (value or {}).values() for s in v]
        if any(size < 1 for size in sizes):
            raise ValueError("hidden layer sizes must be positive integers")
        if isinstance(value, dict):
            unknown = set(value) - {"pi", "vf", "qf"}
            if unknown:
                raise ValueError(f"hidden accepts the keys pi, vf, qf; got {sorted(unknown)}")
        return value


class OptimizerConfig(Section):
    """The optimizer, its learning-rate schedule and the weight penalties."""

    name: OptimizerName | None = None
    """adam, adamw, rmsprop, adagrad or sgd; null: the algorithm's SB3 default (RMSprop for A2C, else Adam)."""
    lr: float | None = Field(None, ge=0.0)
    """Learning rate; null: the algorithm's SB3 default."""
    schedule: Literal["constant", "linear"] = "constant"
    """``linear`` decays the learning rate to 0 over the budget."""
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 penalty (decoupled for AdamW); with ``decay_to: source``, the L2-SP strength."""
    decay_to: Literal["zero", "source"] = "zero"
    """Transfers: ``source`` pulls the copied weights toward the source's values instead of toward zero (L2-SP:
    ``weight_decay/2 * ||w - w_source||^2``; new layers keep plain L2 of the same strength)."""
    l1: float = Field(0.0, ge=0.0)
    """L1 penalty on weight matrices."""
    eps: float | None = Field(None, gt=0.0)
    """Adam/RMSprop/Adagrad epsilon; null keeps SB3's default (1e-5 for PPO/A2C)."""
    momentum: float | None = Field(None, ge=0.0)
    """SGD/RMSprop momentum."""


class KickstartConfig(Section):
    """Kickstarting (transfers): a distillation loss toward the source's policy whose weight decays to zero."""

    weight: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """The loss weight at the start of fine-tuning; 0 turns kickstarting off."""
    steps: int | None = Field(None, ge=1)
    """Environment steps over which the weight goes to zero; null: the transfer's budget."""
    schedule: Literal["linear", "constant"] = "linear"
    """``linear``: from `weight` down to 0 at `steps`; ``constant``: `weight` until `steps`, then 0."""
    temperature: float = Field(0.01, gt=0.0, allow_inf_nan=False)
    """DQN: the softmax temperature that turns Q-values into the distributions compared (Rusu et al., 2016)."""


class SourceTransitionsConfig(Section):
    """Instance transfer (transfers with DQN, SAC or TD3): the source's own transitions replayed with the target's."""

    steps: int = Field(0, ge=0)
    """Transitions the source policy collects before fine-tuning; 0 turns it off."""
    share: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    """Share of every replayed batch drawn from them at the start."""
    decay_steps: int | None = Field(None, ge=1)
    """Environment steps over which that share goes linearly to 0; null: the transfer's budget."""
    env: str | None = None
    """The game the source plays; null: its own run's game (a plain SB3 zip needs it given)."""
    context: dict[str, Any] = Field(default_factory=dict)
    """Context of `env`."""


class AgentConfig(Section):
    """The learning algorithm, its hyperparameters, its network and its optimizer."""

    algo: Algo = "ppo"
    """ppo, a2c, dqn (discrete actions), sac or td3 (continuous actions)."""
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the SB3 algorithm (n_steps, batch_size, gamma, ...)."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    kickstart: KickstartConfig = Field(default_factory=KickstartConfig)
    """Transfers with PPO, A2C or DQN: distil the source's policy while fine-tuning (Schmitt et al., 2018)."""
    source_transitions: SourceTransitionsConfig = Field(default_factory=SourceTransitionsConfig)
    """Transfers with DQN, SAC or TD3: replay the source's own transitions beside the target's."""

    def source_learning(self) -> list[str]:
        """The settings switched on that learn from a source (refused wherever no source reaches the agent)."""
        used = {
            "kickstart": self.kickstart.weight > 0,
            "source_transitions": self.source_transitions.steps > 0,
        }
        return [key for key, on in used.items() if on]

    def check(self, origin: str, inherits: bool = False) -> None:
        """`inherits`: a transfer's, study's or tuning's section, written on top of the source's agent; without
        its own `algo` the hyperparameters are checked once the source's algorithm is known."""
        if not inherits or "algo" in self.model_fields_set:
            check_hyperparams(self, origin)
        if self.kickstart.weight > 0 and "algo" in self.model_fields_set:  # else: the source's, checked later
            from rltransfer.agents.kickstart import KICKSTART_ALGOS

            if self.algo not in KICKSTART_ALGOS:
                raise ConfigError(
                    f"{origin}: `agent.kickstart` distils the source's policy in PPO, A2C and DQN updates, not "
                    f"{self.algo.upper()}. Use one of those, or set `agent.kickstart.weight: 0`."
                )


_REDIRECTS = {
    "learning_rate": "agent.optimizer.lr",
    "policy_kwargs": "agent.policy",
    "seed": "seed",
    "device": "device",
    "env": "env",
    "use_rms_prop": "agent.optimizer.name",
    "rms_prop_eps": "agent.optimizer.eps",
}
_MANAGED = {
    "use_rms_prop",
    "rms_prop_eps",
    "policy",
    "env",
    "learning_rate",
    "policy_kwargs",
    "seed",
    "device",
    "tensorboard_log",
    "verbose",
    "_init_setup_model",
}


def check_source_learning(agent: AgentConfig, origin: str) -> None:
    """Kickstarting and source transitions need an algorithm that can use them (`agent` in full, as built)."""
    from rltransfer.agents.kickstart import KICKSTART_ALGOS

    if agent.kickstart.weight > 0 and agent.algo not in KICKSTART_ALGOS:
        raise ConfigError(
            f"{origin}: `agent.kickstart` distils the source's policy in PPO, A2C and DQN updates, not "
            f"{agent.algo.upper()}. Use one of those, or set `agent.kickstart.weight: 0`."
        )
    if agent.source_transitions.steps > 0 and agent.algo not in ("dqn", "sac", "td3"):
        raise ConfigError(
            f"{origin}: `agent.source_transitions` replays the source's transitions, which needs an off-policy "
            f"agent with a replay buffer (DQN, SAC, TD3), not {agent.algo.upper()}. Set "
            "`agent.source_transitions.steps: 0`."
        )


_FRACTIONS = {
    "gamma": "the discount of future rewards",
    "gae_lambda": "the GAE bias-variance trade-off",
    "tau": "the soft update coefficient of the target network",
}
"""Hyperparameters that SB3 takes unchecked although only [0, 1] makes sense."""


def check_hyperparams(agent: AgentConfig, origin: str) -> None:
    """Every hyperparameter must be a keyword argument of the SB3 algorithm that rltransfer does not set itself."""
    accepted = (
        set(inspect.signature(ALGORITHMS[agent.algo].sb3_cls.__init__).parameters) - _MANAGED - {"self"}
    )
    for key in agent.hyperparams:
        if key in _MANAGED:
            where = _REDIRECTS.get(key, "the top level of the config")
            raise ConfigError(
                f"{origin}: `agent.hyperparams.{key}` is set by rltransfer; set it with `{where}` instead."
            )
        if key not in accepted:
            raise ConfigError(
                f"{origin}: `agent.hyperparams.{key}` is not a setting of {agent.algo.upper()}"
                f"{did_you_mean(key, accepted)}. Its settings are: {', '.join(sorted(accepted))}."
            )
        value = agent.hyperparams[key]
        if key in _FRACTIONS and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise ConfigError(
                f"{origin}: `agent.hyperparams.{key}` must be a number in [0, 1] ({_FRACTIONS[key]}), got "
                f"{shown(value)}."
            )


class _AgentOnly(Section):
    agent: AgentConfig

    def check(self, origin: str) -> None:
        self.agent.check(origin)


def parse_agent(data: Any, origin: str = "config") -> AgentConfig:
    """Validate an ``agent`` section on its own (errors name `agent.<key>`)."""
    return parse_config({"agent": data}, _AgentOnly, origin).agent


def inherit_agent(base: AgentConfig, given: AgentConfig | None, origin: str = "config") -> AgentConfig:
    """The agent a transfer builds: the source's (`base`) with what the config's ``agent`` section sets on top.

    Only the keys the user wrote count, so ``agent: {hyperparams: {n_steps: 256}}`` keeps the source's network,
    optimizer and other settings. With another algorithm than the source's, only the source's network
    (``policy``) is kept: its hyperparameters and optimizer belong to its own algorithm."""
    if given is None:
        return base
    changes = given.model_dump(mode="json", exclude_unset=True)
    inherited = base.model_dump(mode="json")
    if changes.get("algo", base.algo) != base.algo:
        inherited = {"policy": inherited["policy"]}
    return parse_agent(_deep_merge(inherited, changes), origin)


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "hyperparams":
            merged[key] = _deep_merge(merged[key], value)
        elif key == "hyperparams" and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
