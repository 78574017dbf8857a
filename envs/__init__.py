"""Families of similar games, registered with gymnasium under the ``rltransfer/`` namespace on import."""

from rltransfer.envs import atari, cartpole, classic, grids, lunarlander
from rltransfer.envs.base import (
    FAMILIES,
    ContextParam,
    EnvFamily,
    describe_families,
    family_of,
    register_family,
)

for _family in (
    cartpole.FAMILY,
    classic.MOUNTAIN_CAR,
    classic.ACROBOT,
    classic.PENDULUM,
    lunarlander.FAMILY,
    grids.MINATAR,
    grids.DOORKEY,
    atari.ATARI,
):
    register_family(_family)

__all__ = ["FAMILIES", "ContextParam", "EnvFamily", "describe_families", "family_of", "register_family"]
