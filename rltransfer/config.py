"""YAML configs validated into typed objects; every error names the file, the key and the fix."""

from __future__ import annotations

import inspect
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rltransfer.errors import ConfigError, did_you_mean

Activation = Literal["tanh", "relu", "elu", "leaky_relu", "gelu", "silu"]
Algo = Literal["ppo", "a2c", "dqn", "sac", "td3"]
OptimizerName = Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class EnvConfig(_Section):
    """The game: a gymnasium id (``CartPole-v1``, ``rltransfer/CartPoleLongPole-v1``, ``module:EnvId``)."""

    id: str
    """Gymnasium environment id."""
    context: dict[str, Any] = Field(default_factory=dict)
    """Context overrides for rltransfer families (e.g. ``pole_length: 2.0``); for other envs, gym.make kwargs."""
    n_envs: int = Field(8, ge=1)
    """Parallel training environments (a DummyVecEnv)."""


class EvalConfig(_Section):
    """Evaluation on a separate environment, early stopping, and the return threshold."""

    every: int = Field(5000, ge=1)
    """Evaluate every this many environment steps (summed over the parallel envs); also once at step 0."""
    episodes: int = Field(10, ge=1)
    """Episodes per evaluation."""
    deterministic: bool = True
    """Evaluate the greedy (deterministic) policy."""
    patience: int | None = Field(5, ge=1)
    """Stop when this many evaluations in a row bring no new best (null: never stop early)."""
    min_evals: int = Field(2, ge=0)
    """Evaluations before early stopping may trigger."""
    threshold: float | Literal["env"] | None = None
    """Stop as soon as the mean evaluation return reaches this; ``env`` takes the env's reward threshold."""


class PolicyConfig(_Section):
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


class OptimizerConfig(_Section):
    """The optimizer, its learning-rate schedule and the weight penalties."""

    name: OptimizerName | None = None
    """adam, adamw, rmsprop, adagrad or sgd; null: the algorithm's SB3 default (RMSprop for A2C, else Adam)."""
    lr: float | None = Field(None, ge=0.0)
    """Learning rate; null: the algorithm's SB3 default."""
    schedule: Literal["constant", "linear"] = "constant"
    """``linear`` decays the learning rate to 0 over the budget."""
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 penalty (decoupled for AdamW)."""
    l1: float = Field(0.0, ge=0.0)
    """L1 penalty on weight matrices."""
    eps: float | None = Field(None, gt=0.0)
    """Adam/RMSprop/Adagrad epsilon; null keeps SB3's default (1e-5 for PPO/A2C)."""
    momentum: float | None = Field(None, ge=0.0)
    """SGD/RMSprop momentum."""


class AgentConfig(_Section):
    """The learning algorithm, its hyperparameters, its network and its optimizer."""

    algo: Algo = "ppo"
    """ppo, a2c, dqn (discrete actions), sac or td3 (continuous actions)."""
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the SB3 algorithm (n_steps, batch_size, gamma, ...)."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)


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


class RunConfig(_Section):
    """What every run has: a name, a game, a budget, evaluation and where its files go."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
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

    @staticmethod
    def _check_device(value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("device must be auto, cpu, mps, cuda or cuda:N")
        return value

    _known_device = field_validator("device")(_check_device)


class TrainConfig(RunConfig):
    """``rltransfer train``: train a source agent from scratch."""

    agent: AgentConfig = Field(default_factory=AgentConfig)


class ChainStage(_Section):
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist. Check the path (relative paths start at {Path.cwd()})."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(
            f"{path} is not valid YAML: {error}. Fix the syntax at the position shown."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; a config must be YAML text.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a YAML mapping of settings (key: value), not a {type(data).__name__}."
        )
    return data


def parse_config(data: dict[str, Any], model: type[ConfigT], origin: str = "config") -> ConfigT:
    """Validate a mapping into `model`; the first problem becomes a :class:`ConfigError` naming its key."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin} must be a mapping of settings (key: value), not a {type(data).__name__}."
        )
    try:
        config = model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_explain(error, model, origin)) from None
    budget, evaluation = getattr(config, "budget", None), getattr(config, "eval", None)
    if budget is not None and evaluation is not None and budget < evaluation.every:
        raise ConfigError(
            f"{origin}: `budget` ({budget:,}) is smaller than `eval.every` ({evaluation.every:,}): the run would never "
            "be evaluated after it starts learning. Raise the budget or evaluate more often."
        )
    agent = getattr(config, "agent", None)
    if agent is not None:
        check_hyperparams(agent, origin)
    return config


class _AgentOnly(_Section):
    agent: AgentConfig


def parse_agent(data: Any, origin: str = "config") -> AgentConfig:
    """Validate an ``agent`` section on its own (errors name `agent.<key>`)."""
    return parse_config({"agent": data}, _AgentOnly, origin).agent


def load_config(path: str | Path, model: type[ConfigT], overrides: dict[str, Any] | None = None) -> ConfigT:
    """Load a YAML file into `model`; ``name`` defaults to the file's stem; `overrides` use dotted keys."""
    data = load_yaml(path)
    data.setdefault("name", Path(path).stem)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value, str(path))
    return parse_config(data, model, str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any, origin: str = "config") -> None:
    """Set ``a.b.c`` in nested dicts, creating missing levels."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"{origin}: cannot set `{dotted}`: `{key}` holds a {type(child).__name__}, not a mapping."
            )
        node = child
    node[keys[-1]] = value


def check_hyperparams(agent: AgentConfig, origin: str) -> None:
    """Every hyperparameter must be a keyword argument of the SB3 algorithm that rltransfer does not set itself."""
    from rltransfer.agents import ALGORITHMS

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


def _explain(error: ValidationError, model: type[BaseModel], origin: str) -> str:
    # inside a union (e.g. a strategy name or mapping) the deepest error is the one that explains the mistake
    first = max(error.errors(), key=lambda item: len(item["loc"]))
    location = _trim_union_tags(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, first["loc"][:-1])
        key = str(first["loc"][-1])
        return (
            f"{origin}: `{location}` is not a known setting{did_you_mean(key, known)}. "
            f"Known settings here: {', '.join(known)}. Remove or rename the key."
        )
    if kind == "missing":
        return f"{origin}: `{location}` is required but missing. Add it to the config."
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{origin}: `{location}` is invalid: {message} (got {shown}). Fix the value in the config."


_UNION_TAGS = {
    "list[int]",
    "dict[str,list[int]]",
    "float",
    "str",
    "int",
    "bool",
    "AgentConfig",
    "StudyStrategy",
    "ChainStage",
}


def _trim_union_tags(loc: tuple[Any, ...]) -> str:
    parts = []
    for part in loc:
        text = str(part)
        # pydantic names union members (e.g. 'list[int]', 'AgentConfig', 'literal[...]') inside the location
        if text in _UNION_TAGS or text.startswith(("literal[", "function-", "constrained-")):
            continue
        parts.append(text)
    return ".".join(parts) or "(top level)"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            continue
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The config section class inside an annotation such as ``list[str | StudyStrategy] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


class StudySource(_Section):
    """The study's source agent: a train config trained first (inside the study), or an existing agent."""

    config: str | None = None
    """A train config (YAML path or shipped name such as cartpole/source), trained once as the study's first run."""
    path: str | None = None
    """An rltransfer run directory or an SB3 .zip."""
    seed: int = Field(0, ge=0)
    """Seed of the source training (every target run pairs with this one source)."""
    trust_source: bool = False
    """With ``path``: load it with SB3's full loader (runs pickled objects in the file; only for trusted files)."""


class StudyTarget(_Section):
    """One target game of a study."""

    id: str
    context: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Short name in reports and folders; default: the id without namespace and version."""


class StudyStrategy(_Section):
    """A user-named strategy: copy what fits, freeze and re-initialise the named layers, fine-tune the rest."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
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


class StudyEval(_Section):
    """The evaluation schedule every run of a study shares (no early stopping: equal budgets)."""

    every: int = Field(5000, ge=1)
    episodes: int = Field(10, ge=1)
    deterministic: bool = True


class StudyConfig(_Section):
    """``rltransfer study``: one source, targets x strategies x seeds, compared with learning from scratch."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    log_root: str = "runs"
    device: str = "auto"
    source: StudySource
    targets: list[StudyTarget] = Field(..., min_length=1)
    strategies: list[str | StudyStrategy] = Field(default_factory=lambda: ["scratch", "finetune"])
    """Built in: scratch (always run, the baseline), finetune, freeze-trunk, head-only; or {name, freeze, reinit}."""
    seeds: list[int] | int = 3
    """Seeds (a list, or a count n meaning 0..n-1); run r of every strategy uses seed r."""
    budget: int = Field(..., ge=1)
    """Environment steps of every run; metrics only use evaluations up to this step (SB3 may overshoot it)."""
    n_envs: int | None = Field(None, ge=1)
    """Parallel envs per run; default: the source's."""
    eval: StudyEval = Field(default_factory=StudyEval)
    threshold: float | Literal["env"] = "env"
    """Return for time-to-threshold; ``env`` uses each target's reward threshold."""
    last_evals: int = Field(3, ge=1)
    """Evaluations averaged for the asymptotic return."""
    agent: AgentConfig | None = None
    """Target agent for every strategy; default: the source's."""

    _known_device = field_validator("device")(RunConfig._check_device)

    @field_validator("seeds")
    @classmethod
    def _positive_seeds(cls, value: list[int] | int) -> list[int] | int:
        if isinstance(value, int) and value < 1:
            raise ValueError("seeds must be a positive count or a list of seeds")
        if isinstance(value, list) and (
            not value or any(seed < 0 for seed in value) or len(set(value)) != len(value)
        ):
            raise ValueError("seeds must be a non-empty list of distinct non-negative integers")
        return value

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _packaged_configs() -> list[str]:
    root = resources.files("rltransfer.configs")
    found = []
    for family in root.iterdir():
        if family.is_dir() and not family.name.startswith("_"):
            found += [
                f"{family.name}/{item.name[:-5]}" for item in family.iterdir() if item.name.endswith(".yaml")
            ]
    return sorted(found)


def resolve_config_path(argument: str) -> Path:
    """A config file path as given, else a config shipped with rltransfer (``cartpole/source``)."""
    path = Path(argument)
    if path.is_file():
        return path
    name = argument.removeprefix("configs/").removesuffix(".yaml")
    packaged = resources.files("rltransfer.configs").joinpath(*f"{name}.yaml".split("/"))
    if packaged.is_file():
        with resources.as_file(packaged) as real:
            return Path(real)
    raise ConfigError(
        f"Config {argument} does not exist (relative paths start at {Path.cwd()}). "
        f"Give a YAML file, or one of the configs shipped with rltransfer: {', '.join(_packaged_configs())}."
    )
