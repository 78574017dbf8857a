"""A source's observation scaling: SB3's ``vec_normalize.pkl`` read without running pickled code, and applied to
the envs a transfer (or an evaluation) plays on.

``VecNormalize.save`` pickles the whole wrapper (spaces, random generators, statistics). Only the observation
statistics matter here, so the file is read by an unpickler that admits numpy's array rebuilding and turns every
other object it knows (SB3's VecNormalize and RunningMeanStd, gymnasium's spaces, numpy's random generators) into
an inert record of its fields; any other global in the file is refused.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rltransfer.core.errors import TransferError

VEC_NORMALIZE = "vec_normalize.pkl"

_ARRAYS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# classes and factories turned into inert records: their fields are read, their code never runs
_RECORDED = ("stable_baselines3.common.", "gymnasium.spaces.", "numpy.random.", "collections")


@dataclass(frozen=True)
class ObservationScaling:
    """The observation statistics a source was trained with (SB3's VecNormalize)."""

    mean: np.ndarray
    var: np.ndarray
    count: float
    clip_obs: float
    epsilon: float
    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)


class _Record:
    """Stands in for an object of the file: keeps its fields (pickle state), runs none of its code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    def __call__(self, *args: Any, **kwargs: Any) -> _Record:  # a factory (numpy's generator constructors)
        return _Record(*args)


class _RecordClass(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> _Record:
        return _Record(*args)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAYS:
            return super().find_class(module, name)
        if module.startswith(_RECORDED):
            return _RecordClass(name, (_Record,), {})
        raise pickle.UnpicklingError(f"{module}.{name} is not something a VecNormalize file holds")


def read_scaling(path: Path) -> ObservationScaling:
    """The observation statistics in an SB3 ``vec_normalize.pkl``, read without running code from the file."""
    try:
        with path.open("rb") as handle:
            saved = _SafeUnpickler(handle).load()
        rms = saved.obs_rms
        mean, var = np.asarray(rms.mean, dtype=np.float64), np.asarray(rms.var, dtype=np.float64)
        scaling = ObservationScaling(
            mean, var, float(rms.count), float(saved.clip_obs), float(getattr(saved, "epsilon", 1e-8)), path
        )
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError) as error:
        raise TransferError(
            f"{path} is not a VecNormalize file rltransfer can read safely ({error}): only the observation "
            "statistics SB3's VecNormalize.save writes are admitted, never code. Remove the file to transfer "
            "without the source's observation scaling."
        ) from None
    if isinstance(rms.mean, dict) or getattr(saved, "norm_obs", True) is False:
        raise TransferError(
            f"{path}: dict observations or norm_obs=False are not supported; remove the file."
        )
    return scaling


def scaling_for(env: VecEnv, scaling: ObservationScaling | None, where: str) -> ObservationScaling | None:
    """The source's scaling when it fits `env`'s observations; when the shapes differ it is dropped, with a
    warning that says so."""
    if scaling is None:
        return None
    shape = tuple(env.observation_space.shape or ())
    if shape != scaling.shape:
        warnings.warn(
            f"The source's observation scaling ({scaling.path}) is for observations of shape {scaling.shape}, "
            f"but {where} has {shape}: it is dropped, and the target's observations go in unscaled.",
            stacklevel=2,
        )
        return None
    return scaling


def apply_scaling(env: VecEnv, scaling: ObservationScaling | None) -> VecEnv:
    """`env` with the source's observation scaling, fixed (the transferred layers were trained on it; rewards
    are left as they are)."""
    if scaling is None:
        return env
    wrapped = VecNormalize(
        env,
        training=False,
        norm_obs=True,
        norm_reward=False,
        clip_obs=scaling.clip_obs,
        epsilon=scaling.epsilon,
    )
    wrapped.obs_rms = RunningMeanStd(shape=scaling.shape)
    wrapped.obs_rms.mean, wrapped.obs_rms.var = scaling.mean.copy(), scaling.var.copy()
    wrapped.obs_rms.count = scaling.count
    return wrapped
