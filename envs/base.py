"""Families of similar games: a base game plus named context parameters with defaults and ranges.

A source or target task is data, not a subclass: a registered id (a named variant) or an id plus context overrides.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from rltransfer.core.errors import ConfigError, did_you_mean, shown
from rltransfer.envs.context import ContextDistribution, is_distribution, parse_distribution

NAMESPACE = "rltransfer"


@dataclass(frozen=True)
class ContextParam:
    """One physical parameter of a family: default, allowed range and meaning."""

    default: float
    low: float
    high: float
    doc: str
    attribute: str | None = None
    """The attribute of the environment that holds it (default: the parameter's own name)."""


@dataclass(frozen=True)
class EnvFamily:
    """A base game, its context parameters and its named variants (each registered as ``rltransfer/<Name>-vN``)."""

    name: str
    entry_point: str
    params: Mapping[str, ContextParam]
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named variants: context overrides, plus fixed settings that are not context (e.g. ``game`` for MinAtar)."""
    version: int = 1
    max_episode_steps: int | None = None
    reward_threshold: float | None = None
    doc: str = ""
    requires: tuple[tuple[str, ...], str] | None = None
    """(modules, rltransfer extra) for a family that needs optional packages, e.g. (("Box2D", "pygame"), "box2d")."""
    register_base: bool = True
    """False for families whose variants are different games (``game`` in the variant): no base id."""
    eval_context: Mapping[str, float] = field(default_factory=dict)
    """Context the evaluation env uses on top of the run's, e.g. unclipped rewards so that returns are scores."""
    random_only_at_reset: bool = False
    """The game draws random numbers only when an episode starts (from ``np_random``): its evaluation episodes
    can be played side by side with the same results as one after another."""
    step_noise: str | None = None
    """A context parameter that, above 0, makes every step draw random numbers (then ``random_only_at_reset``
    no longer holds)."""
    resample_context: bool = False
    """Its game reads the context parameters at every step, so they can be drawn anew at every episode
    (``{uniform: [low, high]}`` or a list, :mod:`rltransfer.envs.context`)."""

    def missing_package(self) -> str | None:
        """The pip command that installs what this family needs, when something is missing; else None."""
        if self.requires is None:
            return None
        modules, extra = self.requires
        if all(importlib.util.find_spec(module) is not None for module in modules):
            return None
        return f"pip install 'rltransfer[{extra}]'"

    def env_id(self, variant: str | None = None) -> str:
        return f"{NAMESPACE}/{variant or self.name}-v{self.version}"

    def ids(self) -> dict[str, dict[str, Any]]:
        """Every registered id with its context overrides."""
        ids: dict[str, dict[str, Any]] = {self.env_id(): {}} if self.register_base else {}
        ids.update({self.env_id(name): dict(overrides) for name, overrides in self.variants.items()})
        return ids

    def resolve(self, context: Mapping[str, Any]) -> dict[str, float]:
        """Every parameter's value: the defaults with the (checked) overrides applied."""
        return {**{name: spec.default for name, spec in self.params.items()}, **self.validate(context)}

    def apply(self, env: Any, context: Mapping[str, Any]) -> dict[str, float]:
        """Set every parameter (defaults with the checked overrides) on `env`, each on its attribute, and keep
        the values in ``env.context``: one loop for every family whose game reads its constants from attributes."""
        values = self.resolve(context)
        for name, value in values.items():
            setattr(env, self.params[name].attribute or name, value)
        env.context = values
        return values

    def draws_only_at_reset(self, env_id: str, context: Mapping[str, Any]) -> bool:
        """Whether `env_id` with `context` draws its random numbers only when an episode starts."""
        if not self.random_only_at_reset:
            return False
        if self.step_noise is None:
            return True
        values = {**self.resolve({}), **self.ids().get(env_id.split(":")[-1], {}), **context}
        noise = values.get(self.step_noise, 0.0)
        if is_distribution(noise):  # drawn per episode: noisy when it can be above 0
            return not self.distributions({self.step_noise: noise})[self.step_noise].bounds[1] > 0
        return not noise > 0

    def distributions(
        self, context: Mapping[str, Any], where: str = "context"
    ) -> dict[str, ContextDistribution]:
        """The parameters drawn anew at every episode, checked (names, forms, ranges)."""
        drawn = {}
        for key, value in context.items():
            if not is_distribution(value):
                continue
            spec = self._spec(key, where)
            if not self.resample_context:
                raise ConfigError(
                    f"`{where}.{key}` is drawn per episode, which the {self.name} family does not support (only "
                    f"{', '.join(name for name, f in FAMILIES.items() if f.resample_context)} do). Give a number."
                )
            drawn[key] = parse_distribution(value, f"{where}.{key}", spec.low, spec.high)
        return drawn

    def attributes(self) -> dict[str, str]:
        """The game attribute each parameter is set on."""
        return {name: spec.attribute or name for name, spec in self.params.items()}

    def _spec(self, key: str, where: str) -> ContextParam:
        spec = self.params.get(key)
        if spec is None:
            raise ConfigError(
                f"`{where}.{key}` is not a parameter of the {self.name} family{did_you_mean(key, self.params)}. "
                f"Its parameters are: {', '.join(self.params)}."
            )
        return spec

    def validate(self, context: Mapping[str, Any], where: str = "context") -> dict[str, float]:
        """Check names, types and ranges of context overrides; errors name the parameter and its range. Returns
        the fixed values; parameters drawn per episode are checked here and left out (see :meth:`distributions`)."""
        checked = {}
        self.distributions(context, where)
        for key, value in context.items():
            spec = self._spec(key, where)
            if is_distribution(value):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"`{where}.{key}` must be a number, got {shown(value)}.")
            if not spec.low <= value <= spec.high:
                raise ConfigError(
                    f"`{where}.{key}` = {value} is outside the {self.name} family's range [{spec.low}, {spec.high}] "
                    f"({spec.doc}). Choose a value inside it."
                )
            checked[key] = float(value)
        return checked


FAMILIES: dict[str, EnvFamily] = {}


def register_family(family: EnvFamily) -> EnvFamily:
    """Register the family's base id and every variant with gymnasium (idempotent)."""
    FAMILIES[family.name] = family
    for env_id, overrides in family.ids().items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=family.entry_point,
            max_episode_steps=family.max_episode_steps,
            reward_threshold=family.reward_threshold,
            kwargs=dict(overrides),
        )
    return family


def family_of(env_id: str) -> EnvFamily | None:
    """The family an id belongs to, or None for other gymnasium ids."""
    env_id = env_id.split(":")[-1]
    for family in FAMILIES.values():
        if env_id in family.ids():
            return family
    return None


def describe_families() -> str:
    """A text listing of every family: ids, parameters with defaults and ranges."""
    lines = []
    for family in FAMILIES.values():
        missing = family.missing_package()
        lines.append(f"{family.name}: {family.doc}" + (f"  [not installed: {missing}]" if missing else ""))
        lines.append("  ids:")
        for env_id, overrides in family.ids().items():
            shown = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
            lines.append(f"    {env_id}  ({shown})")
        lines.append("  context parameters:")
        for name, spec in family.params.items():
            lines.append(f"    {name} = {spec.default}  range [{spec.low}, {spec.high}]  {spec.doc}")
    return "\n".join(lines)
