"""LunarLander with changed gravity, wind and turbulence; needs Box2D and pygame (``pip install 'rltransfer[box2d]'``).

The environment class lives in ``_lunarlander_env`` so that importing rltransfer never imports Box2D."""

from __future__ import annotations

from rltransfer.envs.base import ContextParam, EnvFamily

PARAMS = {
    "gravity": ContextParam(-10.0, -11.99, -1.0, "gravity in m/s^2 (negative: down)"),
    "wind_power": ContextParam(0.0, 0.0, 20.0, "maximum wind force; 0 turns wind off"),
    "turbulence_power": ContextParam(0.0, 0.0, 2.0, "maximum rotational turbulence; applies with wind"),
}

FAMILY = EnvFamily(
    name="LunarLander",
    entry_point="rltransfer.envs._lunarlander_env:LunarLanderContextEnv",
    params=PARAMS,
    variants={
        "LunarLanderLowGravity": {"gravity": -5.0},
        "LunarLanderHighGravity": {"gravity": -11.5},
        "LunarLanderWindy": {"wind_power": 10.0, "turbulence_power": 1.0},
    },
    version=3,
    max_episode_steps=1000,
    reward_threshold=200.0,
    doc="land a craft on the pad (LunarLander-v3 dynamics, 1000 steps, solved at 200)",
    requires=(("Box2D", "pygame"), "box2d"),
)
