"""The LunarLander family's environment (imported by gymnasium only when such an env is made)."""

from __future__ import annotations

from typing import Any

from gymnasium.error import DependencyNotInstalled

from rltransfer.core.errors import ConfigError
from rltransfer.envs.lunarlander import FAMILY

try:
    from gymnasium.envs.box2d.lunar_lander import LunarLander
except (ImportError, DependencyNotInstalled):
    raise ConfigError(
        "The LunarLander family needs Box2D and pygame, which are not installed. Install the extra: pip install "
        "'rltransfer[box2d]' (prebuilt wheels, no compiler needed)."
    ) from None


class LunarLanderContextEnv(LunarLander):
    """gymnasium's LunarLander-v3 (discrete engines) with gravity, wind and turbulence as context."""

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        values = FAMILY.resolve(context)
        wind = values["wind_power"] > 0
        super().__init__(
            render_mode=render_mode,
            gravity=values["gravity"],
            enable_wind=wind,
            wind_power=values["wind_power"] if wind else 15.0,
            turbulence_power=values["turbulence_power"] if wind else 1.5,
        )
        self.context = values
