"""Contexts drawn anew at every episode (domain randomisation, CARL's context distributions).

A context parameter given as ``{uniform: [low, high]}`` or as a list of values is drawn again at every reset
from the game's own random generator (so a seeded env draws the same contexts), set on the game, and, with
``observe_context``, appended to the observation. A source trained this way is a source like any other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rltransfer.core.errors import ConfigError, shown


@dataclass(frozen=True)
class ContextDistribution:
    """Where one context parameter is drawn from at each reset: uniformly in [low, high], or among choices."""

    low: float | None = None
    high: float | None = None
    choices: tuple[float, ...] = ()

    def sample(self, rng: np.random.Generator) -> float:
        if self.choices:
            return float(self.choices[int(rng.integers(len(self.choices)))])
        return float(rng.uniform(self.low, self.high))

    @property
    def bounds(self) -> tuple[float, float]:
        if self.choices:
            return min(self.choices), max(self.choices)
        return float(self.low), float(self.high)  # type: ignore[arg-type]


def is_distribution(value: Any) -> bool:
    """A context value that is drawn per episode rather than fixed: a list, or ``{uniform: [low, high]}``."""
    return isinstance(value, (list, tuple)) or isinstance(value, Mapping)


def parse_distribution(value: Any, where: str, low: float, high: float) -> ContextDistribution:
    """A checked distribution for a parameter whose range is [low, high]; errors name `where`."""
    if isinstance(value, Mapping):
        bounds = value.get("uniform") if set(value) == {"uniform"} else None
        if (
            not isinstance(bounds, (list, tuple))
            or len(bounds) != 2
            or not all(_is_number(bound) for bound in bounds)
            or not bounds[0] < bounds[1]
        ):
            raise ConfigError(
                f"`{where}` must be a number, a list of numbers to choose from at each episode, or "
                f"{{uniform: [low, high]}} with finite low < high; got {shown(value, 80)}."
            )
        distribution = ContextDistribution(low=float(bounds[0]), high=float(bounds[1]))
    else:
        if not value or not all(_is_number(item) for item in value):
            raise ConfigError(
                f"`{where}`: a list gives the values to choose from at each episode and must hold finite numbers; "
                f"got {shown(value, 80)}."
            )
        distribution = ContextDistribution(choices=tuple(float(item) for item in value))
    first, last = distribution.bounds
    if first < low or last > high:
        raise ConfigError(
            f"`{where}` draws values in [{first:g}, {last:g}], outside the parameter's range [{low:g}, {high:g}]. "
            "Keep the distribution inside it."
        )
    return distribution


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ContextSampling(gym.Wrapper):
    """Draws the context parameters in `distributions` at every reset and sets them on the game (each on its
    attribute; then the game's ``refresh_context()``, for constants derived from them). With `observe`, the
    drawn values follow the observation (a flat Box), in the order of `distributions`."""

    def __init__(
        self,
        env: gym.Env,
        distributions: Mapping[str, ContextDistribution],
        attributes: Mapping[str, str],
        observe: bool = False,
    ) -> None:
        super().__init__(env)
        self.distributions = dict(distributions)
        self.attributes = dict(attributes)
        self.observe = observe
        self.values = {name: sum(d.bounds) / 2 for name, d in self.distributions.items()}
        if observe:
            space = env.observation_space
            if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
                raise ConfigError(
                    f"`env.observe_context` appends the drawn context to flat observations, but this game's are "
                    f"{space}. Set `env.observe_context: false`."
                )
            lows = np.array([d.bounds[0] for d in self.distributions.values()], dtype=space.dtype)
            highs = np.array([d.bounds[1] for d in self.distributions.values()], dtype=space.dtype)
            self.observation_space = gym.spaces.Box(
                np.concatenate([space.low, lows]), np.concatenate([space.high, highs]), dtype=space.dtype
            )

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        game = self.env.unwrapped
        for name, distribution in self.distributions.items():
            self.values[name] = distribution.sample(self.np_random)
            setattr(game, self.attributes[name], self.values[name])
        getattr(game, "context", {}).update(self.values)
        refresh = getattr(game, "refresh_context", None)
        if refresh is not None:
            refresh()
        info = {**info, "context": dict(self.values)}
        return self._observe(observation), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(observation), reward, terminated, truncated, info

    def _observe(self, observation: Any) -> Any:
        if not self.observe:
            return observation
        drawn = np.array(list(self.values.values()), dtype=observation.dtype)
        return np.concatenate([observation, drawn])
