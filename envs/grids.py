"""Grid games as families: MinAtar (five 10x10 Atari-like games) and MiniGrid DoorKey mazes.

Each family needs an optional package (``pip install 'rltransfer[minatar]'``, ``[minigrid]``); the environment
classes live in ``_grid_envs`` so that importing rltransfer never imports them. Observations are channel-first
float32 in [0, 1] (for the ``small_cnn`` policy).
"""

from __future__ import annotations

from rltransfer.envs.base import ContextParam, EnvFamily

MINATAR_GAMES = {
    "Breakout": "breakout",
    "SpaceInvaders": "space_invaders",
    "Freeway": "freeway",
    "Asterix": "asterix",
    "Seaquest": "seaquest",
}

MINATAR = EnvFamily(
    name="MinAtar",
    entry_point="rltransfer.envs._grid_envs:MinAtarContextEnv",
    params={
        "sticky_action_prob": ContextParam(0.1, 0.0, 0.5, "chance that the previous action repeats"),
        "difficulty_ramping": ContextParam(1.0, 0.0, 1.0, "1: the game speeds up over time; 0: it does not"),
    },
    variants={f"MinAtar{name}": {"game": game} for name, game in MINATAR_GAMES.items()},
    max_episode_steps=5000,
    doc="MinAtar's 10x10 Atari-like games; channels (4-10) and actions (3-6) differ per game",
    requires=(("minatar", "seaborn"), "minatar"),
    register_base=False,
)

DOORKEY = EnvFamily(
    name="DoorKey",
    entry_point="rltransfer.envs._grid_envs:DoorKeyContextEnv",
    params={
        "size": ContextParam(5, 5, 16, "side of the square grid, walls included; a whole number"),
        "max_steps_per_cell": ContextParam(10, 2, 20, "episode limit = this x size^2 steps"),
    },
    variants={f"DoorKey{n}x{n}": {"size": n} for n in (5, 6, 8, 16)},
    reward_threshold=0.9,
    doc="MiniGrid DoorKey: pick up the key, open the door, reach the goal; the agent sees 7x7 cells at any "
    "grid size; reward 1 - 0.9 x steps/limit, solved at 0.9",
    requires=(("minigrid",), "minigrid"),
    register_base=False,
)
