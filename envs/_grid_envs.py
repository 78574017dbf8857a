"""Environment classes of the MinAtar and DoorKey families (imported by gymnasium only when one is made)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rltransfer.core.errors import ConfigError
from rltransfer.envs.base import EnvFamily
from rltransfer.envs.grids import DOORKEY, MINATAR


def require(family: EnvFamily) -> None:
    """A clear error naming the extra to install when the family's optional package is missing."""
    missing = family.missing_package()
    if missing:
        raise ConfigError(
            f"The {family.name} family needs a package that is not installed. Install the extra: {missing}"
        )


class MinAtarContextEnv(gym.Env):
    """A MinAtar game with float32 channel-first observations (C, 10, 10) in [0, 1] and its minimal action set."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, game: str = "breakout", render_mode: str | None = None, **context: Any) -> None:
        require(MINATAR)
        from minatar import Environment

        self.render_mode = render_mode
        values = MINATAR.resolve(context)
        self.context = values
        self.game_name = game
        self.game = Environment(
            game,
            sticky_action_prob=values["sticky_action_prob"],
            difficulty_ramping=bool(values["difficulty_ramping"]),
        )
        self.action_set = self.game.minimal_action_set()
        self.action_space = spaces.Discrete(len(self.action_set))
        height, width, channels = self.game.state_shape()
        self.observation_space = spaces.Box(0.0, 1.0, (channels, height, width), dtype=np.float32)

    def _observation(self) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(self.game.state(), -1, 0), dtype=np.float32)

    def render(self) -> np.ndarray | None:
        """The 10x10 screen in colour, one colour per channel (later channels drawn on top)."""
        if self.render_mode != "rgb_array":
            return None
        state = self.game.state()
        palette = (np.linspace(60, 255, state.shape[-1])[:, None] * np.array([[1.0, 0.6, 0.3]])).astype(
            np.uint8
        )
        image = np.zeros((*state.shape[:2], 3), dtype=np.uint8)
        for channel in range(state.shape[-1]):
            image[state[..., channel]] = palette[channel]
        return image

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.game.seed(seed)
        self.game.reset()
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward, done = self.game.act(self.action_set[int(action)])
        return self._observation(), float(reward), bool(done), False, {}


# MiniGrid encodes each visible cell as (object, colour, state); dividing by the largest codes gives [0, 1]
_MINIGRID_SCALE = np.array([10.0, 5.0, 2.0], dtype=np.float32).reshape(3, 1, 1)


class DoorKeyContextEnv(gym.Env):
    """MiniGrid DoorKey at any size; observations are the agent's 7x7 view, channel-first floats (3, 7, 7), so
    every size has the same observation and action spaces."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        require(DOORKEY)
        from minigrid.envs import DoorKeyEnv

        self.render_mode = render_mode
        values = DOORKEY.resolve(context)
        for key in ("size", "max_steps_per_cell"):
            if values[key] != int(values[key]):
                raise ConfigError(
                    f"`context.{key}` of the DoorKey family must be a whole number, got {values[key]}."
                )
        self.context = values
        size = int(values["size"])
        self.grid = DoorKeyEnv(
            size=size, max_steps=int(values["max_steps_per_cell"]) * size * size, render_mode=render_mode
        )
        self.action_space = spaces.Discrete(int(self.grid.action_space.n))
        self.observation_space = spaces.Box(0.0, 1.0, (3, 7, 7), dtype=np.float32)

    def render(self) -> np.ndarray | None:
        return self.grid.render() if self.render_mode == "rgb_array" else None

    @staticmethod
    def _observation(observation: dict) -> np.ndarray:
        image = np.moveaxis(observation["image"], -1, 0).astype(np.float32)
        return np.ascontiguousarray(image / _MINIGRID_SCALE, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        observation, _ = self.grid.reset(seed=seed)
        return self._observation(observation), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        observation, reward, terminated, truncated, _ = self.grid.step(int(action))
        return self._observation(observation), float(reward), bool(terminated), bool(truncated), {}
