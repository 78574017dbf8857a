"""The search space: layer choices resolved to the agent's own layer names, parameters sampled by Optuna, and a
sampled recipe applied to a run's config."""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

from torch import nn

from rltransfer.agents.config import parse_agent
from rltransfer.agents.freezing import hidden_layers, output_layers, trunk_layers
from rltransfer.core.errors import ConfigError, LayerSelectionError
from rltransfer.core.layers import select_layers
from rltransfer.tune.config import FloatRange, LayerChoice, TuneSpace

SHARED = ("lr", "weight_decay", "dropout", "optimizer")
"""Parameters both arms search; the transfer arm also searches ``freeze``, ``reinit`` and ``unfreeze_at``."""
_CRITIC = re.compile(r"(^|\.)(value_net|vf|qf\d*|critic)(\.|$)|^critic\.|^q_net\.")


def layer_options(
    policy: nn.Module, space: TuneSpace, reinitialised: set[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The ``freeze`` and ``reinit`` choices as ``{choice name: layer selectors}`` for this policy. Choices that
    select the same layers as an earlier one are dropped (they would only waste trials), with a note."""
    freeze = _options("freeze", space.freeze, lambda name: _freeze_depth(policy, name, reinitialised), policy)
    reinit = _options("reinit", space.reinit, lambda name: _reinit_choice(policy, name), policy)
    return freeze, reinit


def _options(key: str, choices: list[LayerChoice], builtin: Any, policy: nn.Module) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    seen: dict[tuple[str, ...], str] = {}
    for choice in choices:
        if isinstance(choice, str):
            name, layers = choice, builtin(choice)
        else:
            ((name, layers),) = choice.items()
            try:
                select_layers(policy, layers)
            except LayerSelectionError as error:
                raise ConfigError(f"`space.{key}` {name}: {error}") from None
        if name in options:
            raise ConfigError(f"`space.{key}`: the choice `{name}` appears twice.")
        same = seen.get(tuple(sorted(layers)))
        if same is not None:
            print(
                f"Note: `space.{key}` {name} selects the same layers as {same} here; left out.",
                file=sys.stderr,
            )
            continue
        seen[tuple(sorted(layers))] = name
        options[name] = list(layers)
    return options


def _freeze_depth(policy: nn.Module, depth: str, reinitialised: set[str]) -> list[str]:
    """The layers a freeze depth names; never a layer the transfer re-initialises (frozen random features help
    no one)."""
    if depth == "none":
        return []
    trunk = trunk_layers(policy)
    hidden = hidden_layers(policy)
    if depth == "first":
        extractors = [name for name in trunk if "features_extractor" in name]
        layers = extractors[:1] if extractors else trunk
    elif depth == "trunk":
        layers = trunk
    else:
        layers = hidden
    return [name for name in layers if name not in reinitialised]


def _reinit_choice(policy: nn.Module, choice: str) -> list[str]:
    heads = output_layers(policy)
    critic = [name for name in heads if _CRITIC.search(name)]
    if choice == "none":
        return []
    if choice == "critic":
        return critic
    if choice == "actor":
        return [name for name in heads if name not in critic]
    return heads


def sample(trial: Any, space: TuneSpace, arm: str, layers: tuple[dict, dict] | None) -> dict[str, Any]:
    """Draw one recipe from the space through an Optuna trial (define-by-run: choices that cannot matter, such
    as ``unfreeze_at`` with nothing frozen, are not drawn)."""
    params = {key: _suggest(trial, key, getattr(space, key)) for key in SHARED}
    for key, spec in space.hyperparams.items():
        params[f"hyperparams.{key}"] = _suggest(trial, f"hyperparams.{key}", spec)
    if arm == "transfer":
        assert layers is not None
        freeze, reinit = layers
        params["freeze"] = trial.suggest_categorical("freeze", list(freeze))
        params["reinit"] = trial.suggest_categorical("reinit", list(reinit))
        params["unfreeze_at"] = (
            _suggest(trial, "unfreeze_at", space.unfreeze_at) if freeze[params["freeze"]] else None
        )
        params["decay_to"] = _suggest(trial, "decay_to", space.decay_to)
    return params


def _suggest(trial: Any, key: str, spec: Any) -> Any:
    if isinstance(spec, FloatRange):
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    if isinstance(spec, list):
        if len(spec) == 1:
            return spec[0]
        return trial.suggest_categorical(key, spec)
    return spec


def searched(space: TuneSpace, arm: str) -> list[str]:
    """The parameters an arm actually varies (for the report)."""
    specs = {key: getattr(space, key) for key in SHARED}
    specs.update({f"hyperparams.{key}": spec for key, spec in space.hyperparams.items()})
    if arm == "transfer":
        specs.update(
            freeze=space.freeze, reinit=space.reinit, unfreeze_at=space.unfreeze_at, decay_to=space.decay_to
        )
    return [
        key
        for key, spec in specs.items()
        if isinstance(spec, FloatRange) or (isinstance(spec, list) and len(spec) > 1)
    ]


def apply_recipe(
    run: dict[str, Any], params: dict[str, Any], layers: tuple[dict, dict] | None, origin: str
) -> dict[str, Any]:
    """A run config (as planned for the study) with a recipe's choices put in."""
    run = copy.deepcopy(run)
    agent = run["agent"]
    optimizer = agent.setdefault("optimizer", {})
    optimizer["lr"] = float(params["lr"])
    optimizer["weight_decay"] = float(params["weight_decay"])
    if params["optimizer"] is not None:
        optimizer["name"] = params["optimizer"]
    agent.setdefault("policy", {})["dropout"] = float(params["dropout"])
    agent["hyperparams"] = {**agent.get("hyperparams", {}), **_hyperparams(params)}
    run["agent"] = parse_agent(agent, origin).model_dump(mode="json")
    if "freeze" in params:
        assert layers is not None
        freeze, reinit = layers
        run["freeze"] = list(freeze[params["freeze"]])
        run["reinit"] = list(reinit[params["reinit"]])
        run["unfreeze_at"] = params.get("unfreeze_at")
        run["agent"]["optimizer"]["decay_to"] = params.get("decay_to", "zero")
    return run


def agent_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A recipe's agent settings as a study strategy's (or config's) ``agent`` overrides."""
    optimizer: dict[str, Any] = {"lr": float(params["lr"]), "weight_decay": float(params["weight_decay"])}
    if params["optimizer"] is not None:
        optimizer["name"] = params["optimizer"]
    if "decay_to" in params:
        optimizer["decay_to"] = params["decay_to"]
    overrides = {"optimizer": optimizer, "policy": {"dropout": float(params["dropout"])}}
    if _hyperparams(params):
        overrides["hyperparams"] = _hyperparams(params)
    return overrides


def _hyperparams(params: dict[str, Any]) -> dict[str, Any]:
    return {key.split(".", 1)[1]: value for key, value in params.items() if key.startswith("hyperparams.")}
