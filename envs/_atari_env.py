"""The Atari family's environment (imported by gymnasium only when such an env is made)."""

from __future__ import annotations

import collections
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rltransfer.core.errors import ConfigError
from rltransfer.envs._grid_envs import require
from rltransfer.envs.atari import ATARI


class AtariContextEnv(gym.Env):
    """An ALE game behind SB3's standard Atari wrappers, with the last four 84x84 grey frames stacked (84, 84, 4)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, game: str = "pong", render_mode: str | None = None, **context: Any) -> None:
        require(ATARI)
        from ale_py import AtariEnv  # optional (the atari extra): imported only when a game is made
        from stable_baselines3.common.atari_wrappers import AtariWrapper

        self.render_mode = render_mode
        values = ATARI.resolve(context)
        if values["frame_skip"] != int(values["frame_skip"]):
            raise ConfigError(f"`context.frame_skip` must be a whole number, got {values['frame_skip']}.")
        self.context = values
        self.game_name = game
        ale = AtariEnv(
            game=game,
            frameskip=1,
            repeat_action_probability=values["repeat_action_probability"],
            full_action_space=False,
            render_mode=render_mode,
        )
        self.inner = AtariWrapper(
            ale,
            frame_skip=int(values["frame_skip"]),
            terminal_on_life_loss=False,
            clip_reward=bool(values["clip_reward"]),
        )
        self.action_space = spaces.Discrete(int(self.inner.action_space.n))
        self.observation_space = spaces.Box(0, 255, (84, 84, 4), dtype=np.uint8)
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=4)

    def _observation(self) -> np.ndarray:
        return np.concatenate(list(self.frames), axis=-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        frame, _ = self.inner.reset(seed=seed)
        for _ in range(4):
            self.frames.append(frame)
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        frame, reward, terminated, truncated, _ = self.inner.step(int(action))
        self.frames.append(frame)
        return self._observation(), float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> np.ndarray | None:
        return self.inner.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.inner.close()
