"""Atari 2600 games as a family, through ale-py and SB3's standard wrappers (``pip install 'rltransfer[atari]'``).

The environment class lives in ``_atari_env`` so that importing rltransfer never imports ale-py. Observations are
uint8 84x84x4 frames for SB3's Nature-CNN ``CnnPolicy``.
"""

from __future__ import annotations

from rltransfer.envs.base import ContextParam, EnvFamily

ATARI_GAMES = {
    "Pong": "pong",
    "Breakout": "breakout",
    "SpaceInvaders": "space_invaders",
    "Freeway": "freeway",
    "Asterix": "asterix",
    "Seaquest": "seaquest",
}

ATARI = EnvFamily(
    name="Atari",
    entry_point="rltransfer.envs._atari_env:AtariContextEnv",
    params={
        "repeat_action_probability": ContextParam(0.25, 0.0, 0.5, "sticky actions (ALE v5 default 0.25)"),
        "frame_skip": ContextParam(4, 1, 8, "frames per agent step (max-pooled over the last two)"),
        "clip_reward": ContextParam(
            1, 0, 1, "1: training rewards clipped to their sign; evaluation never clips"
        ),
    },
    variants={f"Atari{name}": {"game": game} for name, game in ATARI_GAMES.items()},
    max_episode_steps=27_000,
    doc="Atari 2600 through ale-py with the standard wrappers (no-op reset, frame skip, 84x84 grey, 4 "
    "stacked frames, training rewards clipped to their sign; evaluation returns are game scores)",
    requires=(("ale_py", "cv2"), "atari"),
    register_base=False,
    eval_context={"clip_reward": 0.0},
)
