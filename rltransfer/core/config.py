"""YAML configs validated into typed objects: the shared base of every config kind, its reading and its errors.

Every error names the file, the key and the fix. The config kinds themselves live beside what they configure
(:mod:`rltransfer.rl.config`, :mod:`rltransfer.study.config`, :mod:`rltransfer.vision.config`)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rltransfer.core.errors import ConfigError, did_you_mean, shown

NAME_MAX = 200
"""The longest name (run, study, tuning, strategy, stage): it becomes a folder name, which file systems limit to 255
bytes, and a moved-aside run gets a time stamp appended."""

NAME_PATTERN = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""A name that is one plain path component: letters, digits, ``_ . -``, and not only dots (``.``, ``..``)."""


class Section(BaseModel):
    """A config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def check(self, origin: str) -> None:
        """Checks across keys that a field validator cannot make, run after parsing (errors name `origin`)."""


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def check_device(value: str) -> str:
    """A field validator for ``device``: auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("device must be auto, cpu, mps, cuda or cuda:N")
    return value


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that appears twice in one mapping (YAML says keys are unique; PyYAML
    would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist. Check the path (relative paths start at {Path.cwd()})."
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except _DuplicateKey as duplicate:
        raise ConfigError(
            f"{path}: the key `{duplicate.key}` appears twice in one section (lines {duplicate.first} and "
            f"{duplicate.second}); YAML keeps only one of them. Remove or merge one of the two."
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"{path} is not valid YAML: {error}. Fix the syntax at the position shown."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; a config must be YAML text.") from None
    except RecursionError:
        raise ConfigError(
            f"{path} nests lists or mappings too deeply to be read; a config needs only a few levels. Check the "
            "file for runaway brackets."
        ) from None
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
        raise ConfigError(_explain(error, model, origin, data)) from None
    except RecursionError:
        raise ConfigError(
            f"{origin} nests lists or mappings too deeply to be checked; a config needs only a few levels."
        ) from None
    if isinstance(config, Section):
        config.check(origin)
    return config


def load_config(path: str | Path, model: type[ConfigT], overrides: dict[str, Any] | None = None) -> ConfigT:
    """Load a YAML file into `model`; ``name`` defaults to the file's stem; `overrides` use dotted keys."""
    data = load_yaml(path)
    data.setdefault("name", Path(path).stem)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value, str(path))
    # a mistake may sit in the command line rather than in the file: the origin says both
    origin = f"{path} with the command line's overrides" if overrides else str(path)
    return parse_config(data, model, origin)


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


OTHER_KINDS = {
    "targets": "study",
    "strategies": "study",
    "space": "tune",
    "trials": "tune",
    "stages": "image",
}
"""Top-level keys that mark a config for another command."""


def _explain(error: ValidationError, model: type[BaseModel], origin: str, data: dict[str, Any]) -> str:
    errors = error.errors()
    # a config of another command: it has that command's keys, lacks a required one here and has none of the keys
    # that mark this command's configs (a tune config with a stray `targets` is still a tune config)
    own = {key for key in OTHER_KINDS if key in model.model_fields}
    lacks = any(item["type"] == "missing" and len(item["loc"]) == 1 for item in errors)
    for item in errors if lacks and not own & set(data) else []:
        key = item["loc"][0] if item["type"] == "extra_forbidden" and len(item["loc"]) == 1 else None
        if key in OTHER_KINDS and key not in model.model_fields:
            command = OTHER_KINDS[key]
            return (
                f"{origin} is a config of `rltransfer {command}` (it has `{key}`), not of this command. Run it "
                f"with `rltransfer {command}`."
            )
    # inside a union (e.g. a strategy name or mapping) the deepest error is the one that explains the mistake; at
    # equal depth an unknown key (often a misspelt one) explains more than the required key it was meant to be
    first = max(
        errors,
        key=lambda item: (
            len(item["loc"]),
            item["type"] == "extra_forbidden",
            item["type"] not in ("model_type", "model_attributes_type", "dict_type", "list_type"),
        ),
    )
    location = _trim_union_tags(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, first["loc"][:-1])
        key = str(first["loc"][-1])
        if location in MOVED:
            return f"{origin}: `{location}` is not a setting here: {MOVED[location]}."
        return (
            f"{origin}: `{location}` is not a known setting{did_you_mean(key, known)}. "
            f"Known settings here: {', '.join(known)}. Remove or rename the key."
        )
    if kind == "missing":
        return f"{origin}: `{location}` is required but missing. Add it to the config."
    got = first.get("input")
    value = shown(got) if not isinstance(got, dict) else "a mapping"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{origin}: `{location}` is invalid: {message} (got {value}). Fix the value in the config."


MOVED = {
    "n_timesteps": "rltransfer calls the training length `budget` (environment steps)",
    "policy_kwargs": "the network is `agent.policy` (`hidden`, `activation`, `dropout`, ...)",
    "agent.policy_kwargs": "the network is `agent.policy` (`hidden`, `activation`, `dropout`, ...)",
    "learning_rate": "the learning rate is `agent.optimizer.lr`",
    "agent.learning_rate": "the learning rate is `agent.optimizer.lr`",
    "n_envs": "parallel environments are `env.n_envs`",
    "threshold": "a run's return threshold is `eval.threshold` (a study's and a tuning's is the top-level "
    "`threshold`)",
    "eval.threshold": "a study's (or tuning's) return threshold is the top-level `threshold`, used for time to "
    "threshold; `eval.threshold` is for train and transfer configs, where it stops training",
    "agent.zoo": "rl-baselines3-zoo's settings are per game: put `agent: {zoo: true}` in the source's train "
    "config (or a transfer config), where the game is known",
    "eval.patience": "the runs of a study or tuning never stop early (every run gets the same budget); "
    "`eval.patience` is for train and transfer configs",
}
"""Keys users bring from rl-baselines3-zoo or from another kind of rltransfer config, with where the setting
lives here."""


_UNION_TAGS = {
    "list[int]",
    "list[float]",
    "list[str]",
    "list[any]",
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
        if text in _UNION_TAGS or text.startswith(("literal[", "function-", "constrained-", "list[literal[")):
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
    if path.is_dir():
        raise ConfigError(f"Config {argument} is a folder, not a YAML file: give the config file inside it.")
    raise ConfigError(
        f"Config {argument} does not exist (relative paths start at {Path.cwd()}). "
        f"Give a YAML file, or one of the configs shipped with rltransfer: {', '.join(_packaged_configs())}."
    )


def coerce_config(config: Any, model: type[ConfigT]) -> ConfigT:
    """Accept a config object, a mapping, a YAML path or the name of a shipped config (``cartpole/source``)."""
    if isinstance(config, model):
        return config
    if isinstance(config, dict):
        return parse_config(config, model)
    if isinstance(config, (str, Path)):
        return load_config(resolve_config_path(str(config)), model)
    raise TypeError(f"expected a {model.__name__}, a YAML path or a mapping, got {type(config).__name__}")
