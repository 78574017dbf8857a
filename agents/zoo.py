"""rl-baselines3-zoo's tuned hyperparameters as an rltransfer agent: ``agent: {zoo: true}``.

The zoo's YAML files (copied from rl-baselines3-zoo 2.9.2, ``zoo/README.md``) give per env id the SB3 keyword
arguments the zoo trains with. They are turned into rltransfer's agent sections: ``learning_rate`` (``lin_X``: a
linear schedule) into ``optimizer``, ``policy_kwargs`` (a Python ``dict(...)`` expression, parsed, never run)
into ``policy``, the rest into ``hyperparams``. What belongs to the run rather than the agent (``n_envs``,
``n_timesteps``) or what rltransfer does not do (``normalize``, ``frame_stack``, ``env_wrapper``, action noise) is
reported in a note, not silently dropped.
"""

from __future__ import annotations

import ast
import warnings
from functools import cache
from importlib import resources
from typing import Any

import yaml

from rltransfer.core.errors import ConfigError, did_you_mean, short_list

ZOO_RELEASE = "2.9.2"
# rltransfer families -> the zoo's entry for their base game
FAMILY_KEYS = {
    "CartPole": "CartPole-v1",
    "MountainCar": "MountainCar-v0",
    "Acrobot": "Acrobot-v1",
    "Pendulum": "Pendulum-v1",
    "LunarLander": "LunarLander-v3",
    "DoorKey": "MiniGrid-DoorKey-5x5-v0",
    "Atari": "atari",
}
_RUN_KEYS = {"n_envs": "env.n_envs", "n_timesteps": "budget"}
_NOT_DONE = (
    "normalize",
    "frame_stack",
    "env_wrapper",
    "vec_env_wrapper",
    "callback",
    "noise_type",
    "noise_std",
)
_ACTIVATIONS = {
    "ReLU": "relu",
    "Tanh": "tanh",
    "ELU": "elu",
    "LeakyReLU": "leaky_relu",
    "GELU": "gelu",
    "SiLU": "silu",
}
_SCHEDULED = ("clip_range", "clip_range_vf")


@cache
def _table(algo: str) -> dict[str, Any]:
    text = resources.files("rltransfer.agents").joinpath("zoo", f"{algo}.yml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def zoo_key(env_id: str) -> str:
    """The zoo's entry for a game: its own id, or for an rltransfer family the family's base game."""
    from rltransfer.envs.base import family_of

    family = family_of(env_id)
    if family is not None and family.name in FAMILY_KEYS:
        return FAMILY_KEYS[family.name]
    return env_id.split(":")[-1]


def zoo_entry(algo: str, env_id: str, origin: str) -> tuple[str, dict[str, Any]]:
    """(the zoo's key, its settings) for `algo` on `env_id`, or an error naming what the zoo has."""
    table = _table(algo)
    key = zoo_key(env_id)
    if key not in table:
        games = sorted(k for k in table if k != "default")
        raise ConfigError(
            f"{origin}: `agent.zoo`: rl-baselines3-zoo {ZOO_RELEASE} has no {algo.upper()} hyperparameters for "
            f"{env_id} (looked up as {key}){did_you_mean(key, games)}. It has them for: {short_list(games, 12)}. "
            "Set `agent.zoo` to one of those names, or leave out `zoo` and set the hyperparameters yourself."
        )
    return key, dict(table[key])


def zoo_agent_section(algo: str, env_id: str, origin: str) -> tuple[dict[str, Any], list[str]]:
    """The zoo's settings as an rltransfer ``agent`` mapping, and notes on what went elsewhere or nowhere."""
    key, entry = zoo_entry(algo, env_id, origin)
    section: dict[str, Any] = {"algo": algo, "hyperparams": {}, "policy": {}, "optimizer": {}}
    notes = []
    for name, value in entry.items():
        if name == "policy":
            continue  # rltransfer picks the policy class from the observation space (and `policy.features`)
        if name in _RUN_KEYS:
            notes.append(f"the zoo trains {key} with {name} {value:g}: set `{_RUN_KEYS[name]}` to match")
        elif name in _NOT_DONE:
            notes.append(f"the zoo's `{name}: {value}` has no rltransfer equivalent and is left out")
        elif name == "learning_rate":
            lr, linear = _schedule(value)
            section["optimizer"].update(lr=lr, schedule="linear" if linear else "constant")
        elif name == "policy_kwargs":
            policy, left_out = _policy(value, origin)
            section["policy"].update(policy)
            notes += [f"policy_kwargs `{k}` has no rltransfer equivalent and is left out" for k in left_out]
        elif name in _SCHEDULED and isinstance(value, str):
            start, _ = _schedule(value)
            section["hyperparams"][name] = start
            notes.append(f"`{name}: {value}` is used as the constant {start:g} (its schedule is not kept)")
        elif name == "train_freq" and isinstance(value, list):
            section["hyperparams"][name] = tuple(value)
        else:
            section["hyperparams"][name] = value
    return section, notes


def _schedule(value: Any) -> tuple[float, bool]:
    if isinstance(value, str) and value.startswith("lin_"):
        return float(value[4:]), True
    return float(value), False


def _policy(expression: Any, origin: str) -> tuple[dict[str, Any], list[str]]:
    """The zoo's ``policy_kwargs`` string, e.g. ``dict(net_arch=[64, 64], activation_fn=nn.ReLU)``, read as
    literals (never evaluated)."""
    if isinstance(expression, dict):
        kwargs = expression
    else:
        try:
            call = ast.parse(str(expression).strip(), mode="eval").body
            if not (
                isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict"
            ):
                raise ValueError("not a dict(...) call")
            kwargs = {kw.arg: _literal(kw.value) for kw in call.keywords if kw.arg}
        except (SyntaxError, ValueError) as error:
            raise ConfigError(
                f"{origin}: the zoo's policy_kwargs {expression!r} cannot be read ({error})."
            ) from None
    policy: dict[str, Any] = {}
    left_out = []
    for name, value in kwargs.items():
        if name == "net_arch":
            policy["hidden"] = (
                value if not (isinstance(value, list) and value and isinstance(value[0], dict)) else value[0]
            )
        elif name == "activation_fn" and value in _ACTIVATIONS:
            policy["activation"] = _ACTIVATIONS[value]
        elif name == "ortho_init":
            policy["ortho_init"] = bool(value)
        else:
            left_out.append(name)
    return policy, left_out


def _literal(node: ast.AST) -> Any:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("nn", "th", "torch")
    ):
        return node.attr  # nn.ReLU -> "ReLU"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    return ast.literal_eval(node)


def with_zoo(agent: dict[str, Any], env_id: str, origin: str) -> dict[str, Any]:
    """An ``agent`` mapping with ``zoo`` resolved: the zoo's settings, with what the user wrote on top."""
    zoo = agent.get("zoo")
    if not isinstance(zoo, (bool, str)) or zoo == "":
        raise ConfigError(
            f"{origin}: `agent.zoo` is {zoo!r}; give true (the zoo's settings for this game), false, or the name of "
            "a zoo entry such as CartPole-v1."
        )
    if not zoo:
        return {key: value for key, value in agent.items() if key != "zoo"}
    algo = agent.get("algo", "ppo")
    section, notes = zoo_agent_section(algo, zoo if isinstance(zoo, str) else env_id, origin)
    for note in notes:
        warnings.warn(f"{origin}: {note}.", stacklevel=3)
    merged = dict(section)
    for key, value in agent.items():
        if key == "zoo":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
