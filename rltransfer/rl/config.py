"""The configs of RL runs: the game, evaluation, and what ``rltransfer train`` and ``transfer`` take."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, FiniteFloat, PositiveInt, field_validator, model_validator

from rltransfer.agents.config import AgentConfig
from rltransfer.core.config import NAME_MAX, NAME_PATTERN, Section, check_device
from rltransfer.core.errors import ConfigError


def check_budget(budget: int, every: int, origin: str) -> None:
    """A run must be evaluated at least once after it starts learning."""
    if budget < every:
        raise ConfigError(
            f"{origin}: `budget` ({budget:,}) is smaller than `eval.every` ({every:,}): the run would never be "
            "evaluated after it starts learning. Raise the budget or evaluate more often."
        )


class EnvConfig(Section):
    """The game: a gymnasium id (``CartPole-v1``, ``rltransfer/CartPoleLongPole-v1``, ``module:EnvId``)."""

    id: str
    """Gymnasium environment id."""
    context: dict[str, Any] = Field(default_factory=dict)
    """Context overrides for rltransfer families (e.g. ``pole_length: 2.0``); for other envs, gym.make kwargs.
    CartPole, MountainCar, Acrobot and Pendulum also take a parameter drawn anew at every episode:
    ``{uniform: [low, high]}`` or a list of values to choose from."""
    observe_context: bool = False
    """Append the context parameters drawn per episode to the observation (flat observations)."""
    n_envs: int = Field(8, ge=1)
    """Parallel training environments."""
    vec: Literal["auto", "dummy", "subproc"] = "auto"
    """How the training environments run: ``dummy`` one after another in this process (SB3's DummyVecEnv, best
    for cheap games), ``subproc`` one process each (SubprocVecEnv, for games whose step costs more than passing
    the observation between processes); ``auto`` is subproc for Atari with several envs on a machine of 4 or more
    cores, else dummy."""


class EvalConfig(Section):
    """Evaluation on a separate environment, early stopping, and the return threshold."""

    every: int = Field(5000, ge=1)
    """Evaluate every this many environment steps (summed over the parallel envs); also once at step 0."""
    episodes: int = Field(10, ge=1)
    """Episodes per evaluation."""
    deterministic: bool = True
    """Evaluate the greedy (deterministic) policy."""
    envs: PositiveInt | Literal["auto"] = "auto"
    """Episodes played side by side, one batched forward pass per step, starting where they would one after
    another; possible for deterministic policies on games that draw random numbers only at reset (CartPole,
    Acrobot without torque noise, MountainCar, Pendulum). ``auto``: all of an evaluation's episodes (at most 32)
    where the returns are the same to the bit (discrete actions), else one after another; a number also plays
    continuous actions side by side (returns equal to about 1e-6); 1: always one after another."""
    patience: int | None = Field(5, ge=1)
    """Stop when this many evaluations in a row bring no new best (null: never stop early)."""
    min_evals: int = Field(2, ge=0)
    """Evaluations before early stopping may trigger."""
    threshold: FiniteFloat | Literal["env"] | None = None
    """Stop as soon as the mean evaluation return reaches this; ``env`` takes the env's reward threshold."""


class CheckpointConfig(Section):
    """How often a run's resumable checkpoint is written (weights and optimizers: after every evaluation)."""

    buffer_seconds: float = Field(300.0, ge=0)
    """Off-policy agents (DQN, SAC, TD3): write the replay buffer into the checkpoint at most this often, and
    always when the run is stopped by Ctrl-C or SIGTERM (0: at every checkpoint). A run killed outright resumes
    with the buffer as last written."""


class RunConfig(Section):
    """What every run has: a name, a game, a budget, evaluation and where its files go."""

    name: str = Field(..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    """Run name: the run directory is ``<log_root>/<name>``."""
    seed: int = Field(0, ge=0)
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    log_root: str = "runs"
    """Folder that holds every run; ``tensorboard --logdir <log_root>`` shows them side by side."""
    budget: int = Field(..., ge=1)
    """Environment steps to train for (SB3 finishes the rollout in progress, so on-policy runs may overshoot)."""
    env: EnvConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    _known_device = field_validator("device")(check_device)

    @model_validator(mode="before")
    @classmethod
    def _zoo_agent(cls, data: Any) -> Any:
        """``agent: {zoo: true}``: rl-baselines3-zoo's tuned settings for this game (``zoo: NAME`` for another
        entry of the zoo), with the agent keys written beside it on top."""
        agent = data.get("agent") if isinstance(data, dict) else None
        env = data.get("env") if isinstance(data, dict) else None
        if (
            isinstance(agent, dict)
            and "zoo" in agent
            and isinstance(env, dict)
            and isinstance(env.get("id"), str)
        ):
            from rltransfer.agents.zoo import with_zoo

            data = {**data, "agent": with_zoo(agent, env["id"], "agent.zoo")}
        return data

    def check(self, origin: str) -> None:
        from rltransfer.rl.episodes import check_side_by_side

        check_budget(self.budget, self.eval.every, origin)
        check_side_by_side(self.env.id, self.env.context, self.eval.envs, self.eval.deterministic, origin)


class TrainConfig(RunConfig):
    """``rltransfer train``: train a source agent from scratch."""

    agent: AgentConfig = Field(default_factory=AgentConfig)

    def check(self, origin: str) -> None:
        super().check(origin)
        self.agent.check(origin)
        if self.agent.optimizer.decay_to == "source":
            raise ConfigError(
                f"{origin}: `agent.optimizer.decay_to: source` pulls weights toward a source's, but `rltransfer "
                "train` has no source. Use it in a transfer config (or a study strategy's `agent`)."
            )
        for key in self.agent.source_learning():
            raise ConfigError(
                f"{origin}: `agent.{key}` learns from a source, but `rltransfer train` has no source. Use it "
                "in a transfer config (or a study strategy's `agent`)."
            )
        if self.agent.policy.trunks is not None:
            raise ConfigError(
                f"{origin}: `agent.policy.trunks` holds sources' trunks, which only a transfer fills (with "
                "`combine`); `rltransfer train` would train them from random weights. Remove it, or write a "
                "transfer config with `source` and `combine: {source: SECOND_SOURCE}`."
            )


class CombineConfig(Section):
    """A second source whose trunk runs beside the first's: both frozen, their features concatenated (model
    concatenation); the layers above them and the heads are new."""

    source: str = Field(..., min_length=1)
    """The second source agent: an rltransfer run directory or an SB3 ``.zip`` (any algorithm whose observations
    have the target's shape)."""
    hidden: list[int] = Field(default_factory=lambda: [64])
    """Trainable hidden layers on the concatenated features, below the new heads ([] : heads only)."""
    trust_source: bool = False
    """Load the second source with SB3's full loader (runs pickled objects in the file; trusted files only)."""

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("hidden layer sizes must be positive integers")
        return value


class ChainStage(Section):
    """One intermediate game of a transfer chain, trained for its own budget before the next stage."""

    env: EnvConfig
    budget: int = Field(..., ge=1)
    """Environment steps of this stage."""
    eval: EvalConfig | None = None
    """Evaluation and early stopping of this stage; null: the transfer's own ``eval``."""


class TransferConfig(RunConfig):
    """``rltransfer transfer``: copy a source agent's fitting layers into a target agent and fine-tune it."""

    source: str
    """An rltransfer run directory, or an SB3 ``.zip`` saved by rltransfer or by plain SB3 ``model.save``."""
    freeze: list[str] = Field(default_factory=list)
    """Layers to freeze: exact names, globs (``mlp_extractor.policy_net.*``) or ``up_to:NAME``."""
    reinit: list[str] = Field(default_factory=list)
    """Layers to re-initialise even though they fit (e.g. a fresh head)."""
    layer_map: dict[str, str] = Field(default_factory=dict)
    """Copy a target layer from a source layer of another name: ``{target_layer: source_layer}`` (same shapes).
    Layers whose shapes differ are re-initialised automatically (input adapter, new head); the table printed at
    the start of a transfer shows what happened to every layer."""
    unfreeze_at: int | None = Field(None, ge=1)
    """Two-phase fine-tuning: from the first update after this many steps the frozen layers train too (null: never)."""
    chain: list[ChainStage] = Field(default_factory=list)
    """Transitive transfer: intermediate games trained in order (source -> chain[0] -> ... -> env), each stage
    fine-tuning the previous stage's best model; ``freeze`` applies at every stage, ``reinit`` and ``layer_map``
    to the first."""
    agent: AgentConfig | None = None
    """The target agent; null: the source run's agent (for a plain SB3 zip: the defaults)."""
    trust_source: bool = False
    """Load the source with SB3's full loader, which runs the pickled objects inside the file. Only for files
    you trust; the default reads weights only and never executes anything from the file."""
    combine: CombineConfig | None = None
    """Two sources at once: the trunks of `source` and of ``combine.source`` side by side, frozen, under new
    layers and heads (null: one source)."""

    def check(self, origin: str) -> None:
        super().check(origin)
        if self.agent is not None:
            self.agent.check(origin, inherits=True)
        if self.combine is not None:
            check_combine(self, self.agent, origin)
        if self.unfreeze_at is not None and self.unfreeze_at >= self.budget:
            raise ConfigError(
                f"{origin}: `unfreeze_at` ({self.unfreeze_at:,}) is not below `budget` ({self.budget:,}): the frozen "
                "layers would never train. Lower unfreeze_at or raise the budget."
            )


def check_combine(config: Any, agent: AgentConfig | None, origin: str) -> None:
    """`combine` builds a new network on the sources' trunks: what copies or distils one source's layers does not
    apply (`config`: a transfer config or a study strategy; `agent`: its agent section)."""
    for key in ("reinit", "layer_map", "chain"):
        if getattr(config, key):
            raise ConfigError(
                f"{origin}: `{key}` does not apply with `combine`: the sources' trunks are copied whole and frozen, "
                "and every other layer is new (a chain transfers one source through its stages). Remove one of "
                "them."
            )
    for key in agent.source_learning() if agent is not None else []:
        raise ConfigError(
            f"{origin}: `agent.{key}` learns from one source's own network, which `combine` replaces by a new one "
            "on two sources' trunks. Use them in separate strategies."
        )
