"""The config of ``rltransfer study``: one source, targets x strategies x seeds, against scratch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, FiniteFloat, PositiveInt, StrictInt, field_validator

from rltransfer.agents.config import AgentConfig
from rltransfer.core.config import NAME_MAX, NAME_PATTERN, Section, check_device
from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import ChainStage, CombineConfig, check_budget


def check_seeds(value: list[int] | int) -> list[int] | int:
    """A field validator for seeds given as a count (n: 0..n-1) or a list of distinct non-negative seeds."""
    if isinstance(value, int) and value < 1:
        raise ValueError("seeds must be a positive count or a list of seeds")
    if isinstance(value, list) and (
        not value or any(seed < 0 for seed in value) or len(set(value)) != len(value)
    ):
        raise ValueError("seeds must be a non-empty list of distinct non-negative integers")
    return value


class StudySource(Section):
    """The study's source agent: a train config trained first (inside the study), or an existing agent."""

    config: str | None = None
    """A train config (YAML path or shipped name such as cartpole/source), trained once as the study's first run."""
    path: str | None = None
    """An rltransfer run directory or an SB3 .zip; ``auto``: each target's source chosen from `candidates`."""
    candidates: list[str] = Field(default_factory=list)
    """With ``path: auto``: run directories, .zip files or folders holding them; each target gets the one its
    probe ranks best among those that beat a random policy (as ``rltransfer select`` does)."""
    probe_episodes: int = Field(20, ge=2)
    """With ``path: auto``: deterministic episodes each candidate plays on each target."""
    probe_finetune: int = Field(0, ge=0)
    """With ``path: auto``: fine-tuning steps before the probe's episodes (0: zero-shot)."""
    seed: int = Field(0, ge=0)
    """Seed of the source training (every target run pairs with this one source)."""
    trust_source: bool = False
    """With ``path``: load it with SB3's full loader (runs pickled objects in the file; only for trusted files)."""

    @property
    def auto(self) -> bool:
        return self.path == "auto"

    def check(self, origin: str) -> None:
        if self.auto and self.config is not None:
            raise ConfigError(
                f"{origin}: `source.path: auto` chooses each target's source among `source.candidates`, so "
                "`source.config` (a source the study trains) would be ignored. Remove one of them (train that "
                "source first and list its run directory among the candidates)."
            )
        if self.auto and not self.candidates:
            raise ConfigError(
                f"{origin}: `source.path: auto` chooses each target's source from `source.candidates`, which is "
                "empty. List run directories or .zip files there, e.g. candidates: [runs/a-source, runs/b-source]."
            )
        if self.candidates and not self.auto:
            raise ConfigError(
                f"{origin}: `source.candidates` only applies with `source.path: auto` (the study then chooses "
                "each target's source among them). Set `source.path: auto` or remove `source.candidates`."
            )


class StudyTarget(Section):
    """One target game of a study."""

    id: str
    context: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, max_length=NAME_MAX, pattern=NAME_PATTERN)
    """Short name in reports and folders; default: the id without namespace and version."""


class StudyStrategy(Section):
    """A user-named strategy: copy what fits, freeze and re-initialise the named layers, fine-tune the rest."""

    name: str = Field(..., max_length=NAME_MAX, pattern=NAME_PATTERN)
    freeze: list[str] = Field(default_factory=list)
    reinit: list[str] = Field(default_factory=list)
    unfreeze_at: int | None = Field(None, ge=1)
    """Two-phase fine-tuning: the frozen layers train too after this many steps."""
    layer_map: dict[str, str] = Field(default_factory=dict)
    """``{target_layer: source_layer}``: copy a layer from a source layer of another name."""
    chain: list[ChainStage] = Field(default_factory=list)
    """Transitive transfer: intermediate games trained in order before each target (each stage's budget is its
    own; the report shows the intermediate steps beside the target's metrics)."""
    agent: dict[str, Any] = Field(default_factory=dict)
    """Overrides merged into the study's agent for this strategy only, e.g. ``{optimizer: {lr: 0.0001}}``."""
    combine: CombineConfig | None = None
    """Two sources at once: the study's source and ``combine.source``, their trunks frozen side by side under new
    layers and heads."""


class StudyEval(Section):
    """The evaluation schedule every run of a study shares (no early stopping: equal budgets)."""

    every: int = Field(5000, ge=1)
    episodes: int = Field(10, ge=1)
    deterministic: bool = True
    envs: PositiveInt | Literal["auto"] = "auto"
    """Episodes played side by side (``eval.envs`` of a run)."""


class StudyExecution(Section):
    """Where a study's runs execute: a process pool on this machine (the default) or a Ray cluster."""

    backend: Literal["local", "ray"] = "local"
    """``local``: a process pool here. ``ray``: each run a Ray task (``pip install "rltransfer[ray]"``)."""
    address: str | None = None
    """With ``ray``: the cluster to join (``HOST:PORT`` of its head); none starts Ray on this machine."""
    workers: int | None = Field(None, ge=1)
    """With ``local``: parallel runs (default: one per CPU core)."""
    cpus_per_run: float = Field(1.0, gt=0)
    """With ``ray``: CPUs each run reserves."""
    gpus_per_run: float = Field(0.0, ge=0)
    """With ``ray``: GPU share each run reserves (0.25 puts four runs on one GPU); each run uses the GPU Ray
    gives it."""
    retries: int = Field(2, ge=0)
    """With ``ray``: times a run is started again when its worker process dies."""

    def check(self, origin: str) -> None:
        if self.backend == "local":
            for key, value in (("address", self.address), ("gpus_per_run", self.gpus_per_run or None)):
                if value is not None:
                    raise ConfigError(
                        f"{origin}: `execution.{key}` only applies to `backend: ray` (the local pool runs on "
                        "this machine; it takes `workers`). Set `execution.backend: ray` or remove the key."
                    )
        elif self.workers is not None:
            raise ConfigError(
                f"{origin}: `execution.workers` only applies to `backend: local`; with Ray, the cluster's CPUs "
                "and `cpus_per_run` decide how many runs go at once."
            )


class StudyConfig(Section):
    """``rltransfer study``: one source, targets x strategies x seeds, compared with learning from scratch."""

    name: str = Field(..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    log_root: str = "runs"
    device: str = "auto"
    source: StudySource
    targets: list[StudyTarget] = Field(..., min_length=1)
    strategies: list[str | StudyStrategy] = Field(default_factory=lambda: ["scratch", "finetune"])
    """Built in: scratch (always run, the baseline), finetune, freeze-trunk, head-only; or {name, freeze, reinit}."""
    seeds: list[StrictInt] | StrictInt = 8
    """Seeds (a list, or a count n meaning 0..n-1); run r of every strategy uses seed r. The default, 8, lets the
    paired tests find a 2x speed-up in CartPole-like targets (docs/studies.md); with one strategy, 6 or fewer seeds
    can never reach a verdict."""
    budget: int = Field(..., ge=1)
    """Environment steps of every run; metrics only use evaluations up to this step (SB3 may overshoot it)."""
    n_envs: int | None = Field(None, ge=1)
    """Parallel envs per run; default: the source's."""
    eval: StudyEval = Field(default_factory=StudyEval)
    threshold: FiniteFloat | Literal["env"] = "env"
    """Return for time-to-threshold; ``env`` uses each target's reward threshold."""
    last_evals: int = Field(3, ge=1)
    """Evaluations averaged for the asymptotic return."""
    agent: AgentConfig | None = None
    """Target agent for every strategy; default: the source's."""
    execution: StudyExecution = Field(default_factory=StudyExecution)
    """Where the runs execute; it does not change what they compute (stored results hold for either)."""

    _known_device = field_validator("device")(check_device)

    _positive_seeds = field_validator("seeds")(check_seeds)

    def check(self, origin: str) -> None:
        from rltransfer.rl.episodes import check_side_by_side

        check_budget(self.budget, self.eval.every, origin)
        self.source.check(origin)
        for target in self.targets:
            check_side_by_side(target.id, target.context, self.eval.envs, self.eval.deterministic, origin)
        self.execution.check(origin)
        if self.agent is not None:
            self.agent.check(origin, inherits=True)
            if self.agent.optimizer.decay_to == "source":
                raise ConfigError(
                    f"{origin}: `agent.optimizer.decay_to: source` in the study's agent would reach scratch, which "
                    "has no source. Give it to a strategy: {name: l2sp, agent: {optimizer: {decay_to: source, "
                    "weight_decay: 0.01}}}."
                )
            examples = {
                "kickstart": "{kickstart: {weight: 1.0}}",
                "source_transitions": "{source_transitions: {steps: 10000}}",
            }
            for key in self.agent.source_learning():
                raise ConfigError(
                    f"{origin}: `agent.{key}` in the study's agent would reach scratch, which has no source. "
                    f"Give it to a strategy: {{name: {key.replace('_', '-')}, agent: {examples[key]}}}."
                )

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)
