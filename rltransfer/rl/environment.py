"""Resolve env ids (registered, ``module:EnvId`` and rltransfer families), check contexts, build vector envs."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

import rltransfer.envs  # noqa: F401  (registers the families)
from rltransfer.core.errors import ConfigError, did_you_mean
from rltransfer.envs.base import family_of
from rltransfer.envs.context import ContextSampling
from rltransfer.rl.config import EnvConfig

EVAL_SEED_OFFSET = 10_000


def check_env_id(env_id: str, where: str = "env.id") -> gym.envs.registration.EnvSpec:
    """The spec of a gymnasium id, importing ``module:`` first; unknown ids get a did-you-mean error."""
    name = env_id
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"`{where}` {env_id!r}: the module {module!r} cannot be imported ({error}). "
                "Install it or fix the module name before the colon."
            ) from None
    family = family_of(name)
    missing = family.missing_package() if family is not None else None
    if missing:
        raise ConfigError(
            f"`{where}` {env_id!r} belongs to the {family.name} family, which needs a package that is not "
            f"installed. Install it with: {missing}"
        )
    try:
        return gym.spec(name)
    except gym.error.Error:
        raise ConfigError(
            f"`{where}` {env_id!r} is not a registered gymnasium environment{did_you_mean(name, gym.registry)}. "
            "Run `rltransfer envs` for rltransfer's games, or use `module:EnvId` to import a module that "
            "registers yours."
        ) from None


def check_env(env: EnvConfig, where: str = "env") -> dict[str, Any]:
    """Validate the id and the context overrides (names and ranges for rltransfer families)."""
    check_env_id(env.id, f"{where}.id")
    family = family_of(env.id)
    if family is None:
        return dict(env.context)
    return family.validate(env.context, f"{where}.context")


def context_wrapper(env: EnvConfig, where: str = "env") -> dict[str, Any]:
    """``make_vec_env`` arguments that draw the context parameters given as distributions anew at every episode
    (empty when every parameter is fixed)."""
    family = family_of(env.id)
    drawn = family.distributions(env.context, f"{where}.context") if family is not None else {}
    if not drawn:
        if env.observe_context:
            raise ConfigError(
                f"`{where}.observe_context` appends the context parameters drawn per episode to the observation, "
                f"but `{where}.context` draws none. Give one as {{uniform: [low, high]}} or a list of values, or "
                f"set `{where}.observe_context: false`."
            )
        return {}
    kwargs = {"distributions": drawn, "attributes": family.attributes(), "observe": env.observe_context}
    return {"wrapper_class": ContextSampling, "wrapper_kwargs": kwargs}


def make_envs(env: EnvConfig, seed: int) -> tuple[VecEnv, VecEnv]:
    """Training envs (``env.n_envs``, seeded from `seed`) and a separate single evaluation env (other seeds)."""
    context = check_env(env)
    drawing = context_wrapper(env)
    vec_cls = vec_env_class(env)
    # a worker process unpickles the maker, importing this module and so registering rltransfer's games there
    maker = env.id if vec_cls is DummyVecEnv else functools.partial(make_registered, env.id)
    try:
        train_env = make_vec_env(
            maker, n_envs=env.n_envs, seed=seed, env_kwargs=context, vec_env_cls=vec_cls, **drawing
        )
    except TypeError as error:
        raise ConfigError(
            f"`env.context` {context} was rejected by {env.id}: {error}. Remove the unknown keys."
        ) from None
    eval_env = make_vec_env(
        env.id,
        n_envs=1,
        seed=seed + EVAL_SEED_OFFSET,
        env_kwargs=evaluation_context(env),
        vec_env_cls=DummyVecEnv,
        **drawing,
    )
    return train_env, eval_env


def evaluation_context(env: EnvConfig) -> dict[str, Any]:
    """The run's context with the family's evaluation settings on top (e.g. unclipped Atari rewards)."""
    family = family_of(env.id)
    return {**check_env(env), **(family.eval_context if family is not None else {})}


def evaluation_env_maker(env: EnvConfig) -> Callable[[], gym.Env]:
    """Builds one env like the one inside the evaluation vector env of :func:`make_envs` (same game, context and
    Monitor), for playing evaluation episodes side by side."""
    return functools.partial(_monitored, env.id, evaluation_context(env), context_wrapper(env))


def _monitored(env_id: str, context: dict[str, Any], drawing: dict[str, Any]) -> gym.Env:
    env = Monitor(make_registered(env_id, **context))  # as make_vec_env wraps it
    return drawing["wrapper_class"](env, **drawing["wrapper_kwargs"]) if drawing else env


def make_registered(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` as SB3's ``make_vec_env`` calls it for an id (frames available for rendering), in a process
    where rltransfer's games are registered."""
    try:
        return gym.make(env_id, render_mode="rgb_array", **kwargs)
    except TypeError:
        return gym.make(env_id, **kwargs)


SUBPROC_MIN_CPUS = 4
"""``env.vec: auto`` runs Atari envs in processes of their own only on machines with at least this many cores:
on 2 cores the env processes compete with learning for the CPU and stepping them in one process is faster."""


def vec_env_class(env: EnvConfig, cpus: int | None = None) -> type[VecEnv]:
    """SB3's vector env for ``env.vec``. ``auto``: a process per env for Atari (whose frames cost more to make
    than to pass between processes) with several envs on a machine of `SUBPROC_MIN_CPUS` cores or more; in
    this process for everything else."""
    choice = env.vec
    if choice == "auto":
        family = family_of(env.id)
        atari = family is not None and family.name == "Atari"
        enough = (cpus if cpus is not None else os.cpu_count() or 1) >= SUBPROC_MIN_CPUS
        choice = "subproc" if atari and env.n_envs > 1 and enough else "dummy"
    return SubprocVecEnv if choice == "subproc" else DummyVecEnv


def reward_threshold(env_id: str) -> float | None:
    """The env's registered reward threshold, if any."""
    return check_env_id(env_id).reward_threshold
