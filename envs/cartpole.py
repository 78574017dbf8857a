"""CartPole with changed physics: pole length, cart and pole mass, gravity, push force, time step."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from rltransfer.envs.base import ContextParam, EnvFamily

PARAMS = {
    "pole_length": ContextParam(
        0.5, 0.05, 5.0, "half the pole's length in metres (gymnasium's `length`)", attribute="length"
    ),
    "masspole": ContextParam(0.1, 0.01, 5.0, "pole mass in kg"),
    "masscart": ContextParam(1.0, 0.1, 20.0, "cart mass in kg"),
    "gravity": ContextParam(9.8, 0.5, 100.0, "gravity in m/s^2"),
    "force_mag": ContextParam(10.0, -50.0, 50.0, "push force in N; negative reverses the actions"),
    "tau": ContextParam(0.02, 0.005, 0.1, "seconds between state updates"),
}


class CartPoleContextEnv(CartPoleEnv):
    """gymnasium's CartPole with its physical constants as constructor arguments (CARL-style context)."""

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        super().__init__(render_mode=render_mode)
        FAMILY.apply(self, context)
        self.refresh_context()

    def refresh_context(self) -> None:
        """Recompute the constants gymnasium derives from the masses and the pole's length."""
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length


FAMILY = EnvFamily(
    name="CartPole",
    entry_point="rltransfer.envs.cartpole:CartPoleContextEnv",
    params=PARAMS,
    variants={
        "CartPoleLongPole": {"pole_length": 3.0},
        "CartPoleShortPole": {"pole_length": 0.1},
        "CartPoleHeavyCart": {"masscart": 10.0},
        "CartPoleHighGravity": {"gravity": 50.0},
        "CartPoleCoarseTime": {"tau": 0.06},
        "CartPoleReversedForce": {"force_mag": -10.0},
    },
    max_episode_steps=500,
    reward_threshold=475.0,
    random_only_at_reset=True,
    resample_context=True,
    doc="balance a pole on a cart (CartPole-v1 dynamics, 500 steps, solved at 475)",
)
