"""The config of ``rltransfer tune``: a search over transfer recipes for one target, and the same search over
scratch's own hyperparameters, confirmed on fresh seeds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, FiniteFloat, StrictInt, field_validator, model_validator

from rltransfer.agents.config import AgentConfig
from rltransfer.core.config import NAME_MAX, NAME_PATTERN, Section, check_device
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import check_budget
from rltransfer.study.config import StudyEval, StudyExecution, StudySource, StudyTarget, check_seeds

FREEZE_DEPTHS = ("none", "first", "trunk", "all-but-heads")
"""How deep to freeze, in the agent's own layers: nothing; the first layer of each network (the one reading the
observation; the first convolution of a CNN); the trunk (the feature extractor, or the first layer of each MLP);
every layer but the output heads."""
REINIT_CHOICES = ("none", "critic", "actor", "heads")
"""Which copied layers start afresh: none; the critic's output (value or Q head); the actor's output; both."""


class FloatRange(Section):
    """A float searched between `low` and `high` (on a log scale with ``log: true``)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


Choices = Annotated[list[Any], Field(min_length=1)]
NumberChoices = Annotated[list[float], Field(min_length=1)]
NameChoices = Annotated[list[str], Field(min_length=1)]
DecayTo = Literal["zero", "source"]
LayerChoice = str | dict[str, list[str]]


class TuneSpace(Section):
    """What the search may change. A list is a set of choices, ``{low, high, log}`` a float range, one value is
    fixed. ``freeze`` and ``reinit`` choices are names (FREEZE_DEPTHS, REINIT_CHOICES) resolved to the agent's
    own layers, or ``{name: [layer patterns]}`` of your own. The scratch control searches the same ``lr``,
    ``weight_decay``, ``dropout``, ``optimizer`` and ``hyperparams``."""

    freeze: list[LayerChoice] = Field(default_factory=lambda: list(FREEZE_DEPTHS), min_length=1)
    reinit: list[LayerChoice] = Field(default_factory=lambda: ["none", "critic"], min_length=1)
    lr: FloatRange | NumberChoices | float = Field(
        default_factory=lambda: FloatRange(low=1e-4, high=3e-3, log=True)
    )
    """Learning rate (both arms)."""
    weight_decay: FloatRange | NumberChoices | float = Field(default_factory=lambda: [0.0, 1e-4])
    """L2 weight decay (both arms)."""
    dropout: FloatRange | NumberChoices | float = 0.0
    """Dropout after each hidden layer (both arms)."""
    optimizer: NameChoices | str = "adam"
    """Optimizer name (both arms): adam, adamw, rmsprop, adagrad, sgd."""
    unfreeze_at: Choices | int | None = None
    """Two-phase fine-tuning: the frozen layers train too after this many steps (null: never)."""
    decay_to: Annotated[list[DecayTo], Field(min_length=1)] | DecayTo = "zero"
    """Transfer arm: plain weight decay (``zero``) or L2-SP (``source``: toward the source's weights), e.g.
    ``[zero, source]``."""
    hyperparams: dict[str, FloatRange | Choices | Any] = Field(default_factory=dict)
    """The algorithm's own settings (both arms), e.g. ``{exploration_initial_eps: [1.0, 0.1]}`` for DQN or
    ``{n_epochs: [5, 10]}`` for PPO: merged into ``agent.hyperparams``."""

    @field_validator("optimizer")
    @classmethod
    def _known_optimizers(cls, value: Choices | str) -> Choices | str:
        from rltransfer.core.optim import OPTIMIZERS

        for name in value if isinstance(value, list) else [value]:
            if name not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {name!r}; choose among {', '.join(OPTIMIZERS)}")
        return value

    @field_validator("freeze", "reinit")
    @classmethod
    def _layer_choices(cls, value: list[LayerChoice], info: Any) -> list[LayerChoice]:
        known = FREEZE_DEPTHS if info.field_name == "freeze" else REINIT_CHOICES
        for choice in value:
            if isinstance(choice, str) and choice not in known:
                raise ValueError(
                    f"unknown choice {choice!r}; use one of {', '.join(known)} or {{name: [layer patterns]}}"
                )
            if isinstance(choice, dict) and len(choice) != 1:
                raise ValueError("a choice of your own is one {name: [layer patterns]} entry")
        return value


class PrunerConfig(Section):
    """Stopping unpromising trials early, on their evaluations so far."""

    kind: Literal["median", "none"] = "median"
    """``median``: stop a trial whose area under the curve so far is below the median of earlier trials at the
    same evaluation (Optuna's MedianPruner); ``none``: every trial runs its full budget."""
    startup_trials: int = Field(4, ge=0)
    """Trials that always run in full before any is pruned."""
    warmup_evals: int = Field(2, ge=0)
    """Evaluations of a trial before it may be pruned."""


class TuneConfig(Section):
    """``rltransfer tune``: the best transfer recipe for one target against an equally tuned scratch control."""

    name: str = Field(..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    log_root: str = "runs"
    device: str = "auto"
    source: StudySource
    target: StudyTarget
    budget: int = Field(..., ge=1)
    """Environment steps of every run (trials and confirmation alike)."""
    n_envs: int | None = Field(None, ge=1)
    """Parallel envs per run; default: the source's."""
    eval: StudyEval = Field(default_factory=StudyEval)
    threshold: FiniteFloat | Literal["env"] = "env"
    """Return for time-to-threshold (reported beside the objective); ``env`` uses the target's threshold."""
    last_evals: int = Field(3, ge=1)
    """Evaluations averaged for the asymptotic return in the confirmation."""
    agent: AgentConfig | None = None
    """Agent both arms start from before the search changes it; default: the source's."""
    trials: int = Field(20, ge=1)
    """Trials per arm: the transfer search and the scratch search get the same number."""
    trial_seeds: list[StrictInt] | StrictInt = Field(default_factory=lambda: [100, 101])
    """Seeds every trial runs (their mean is the trial's score); a count n means 100..100+n-1."""
    confirm_seeds: list[StrictInt] | StrictInt = 10
    """Fresh seeds of the confirmation study (best transfer recipe against best scratch); a count n means
    0..n-1. They may not overlap the trial seeds."""
    sampler_seed: int = Field(0, ge=0)
    """Seed of Optuna's TPE sampler."""
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: str | None = None
    """Where trials are stored: an SQLAlchemy URL (a database every machine can reach, for a cluster);
    default: ``sqlite:///<log_root>/<name>/tune.db``."""
    space: TuneSpace = Field(default_factory=TuneSpace)
    execution: StudyExecution = Field(default_factory=StudyExecution)
    """Where trials run: a local process pool (one trial per worker) or a Ray cluster."""

    _known_device = field_validator("device")(check_device)

    _known_seeds = field_validator("trial_seeds", "confirm_seeds")(check_seeds)

    def trial_seed_list(self) -> list[int]:
        seeds = self.trial_seeds
        return list(range(100, 100 + seeds)) if isinstance(seeds, int) else list(seeds)

    def confirm_seed_list(self) -> list[int]:
        seeds = self.confirm_seeds
        return list(range(seeds)) if isinstance(seeds, int) else list(seeds)

    def check(self, origin: str) -> None:
        from rltransfer.rl.episodes import check_side_by_side

        check_budget(self.budget, self.eval.every, origin)
        check_side_by_side(
            self.target.id, self.target.context, self.eval.envs, self.eval.deterministic, origin
        )
        self.execution.check(origin)
        if self.agent is not None:
            self.agent.check(origin, inherits=True)
            for key in self.agent.source_learning():
                raise ConfigError(
                    f"{origin}: `agent.{key}` in a tuning's agent would reach the scratch arm, which has no "
                    "source. Compare it with scratch as a study strategy ({name: ..., agent: {...}})."
                )
        steps = (
            self.space.unfreeze_at if isinstance(self.space.unfreeze_at, list) else [self.space.unfreeze_at]
        )
        late = [step for step in steps if isinstance(step, int) and step >= self.budget]
        if late:
            raise ConfigError(
                f"{origin}: `space.unfreeze_at` offers {late}, not below `budget` ({self.budget:,}): the frozen "
                "layers would never train. Offer steps below the budget (or null: never)."
            )
        shared = sorted(set(self.trial_seed_list()) & set(self.confirm_seed_list()))
        if shared:
            raise ConfigError(
                f"{origin}: `confirm_seeds` and `trial_seeds` share seeds {shared}: the confirmation must run on "
                "seeds the search never saw, or it would confirm the search's own luck. Choose disjoint seeds."
            )
