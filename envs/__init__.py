"""Families of similar games, registered with gymnasium under the ``rltransfer/`` namespace on import."""

from rltransfer.envs import cartpole
from rltransfer.envs.base import (
    FAMILIES,
    ContextParam,
    EnvFamily,
    describe_families,
    family_of,
    register_family,
)

register_family(cartpole.FAMILY)

__all__ = ["FAMILIES", "ContextParam", "EnvFamily", "describe_families", "family_of", "register_family"]
