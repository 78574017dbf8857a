"""Two sources at once (model concatenation): a target agent built on both sources' frozen trunks.

The target's feature extractor is :class:`~rltransfer.agents.trunks.SourceTrunks`: the trunk of the transfer's
``source`` and of ``combine.source`` side by side, their features concatenated; ``combine.hidden`` sizes the new
trainable layers above them, and the heads are new. The trunks are copied whole and frozen, so a PPO or A2C
target computes them once per rollout (:mod:`rltransfer.agents.trunk_cache`).
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from rltransfer.agents.config import AgentConfig, TrunkSpec
from rltransfer.agents.freezing import freeze_agent, layer_copies
from rltransfer.agents.trunks import SourceTrunk, check_loads, load_trunks, source_trunk
from rltransfer.core.errors import ConfigError, LayerSelectionError
from rltransfer.core.layers import layer_names, select_layers
from rltransfer.rl.config import CombineConfig
from rltransfer.rl.mapping import LayerMapping
from rltransfer.rl.sources import SourceAgent, source_agent_config

NEW_LAYER = "new layer on the combined trunks"


def combined_agent(
    agent: AgentConfig, sources: list[SourceAgent], settings: CombineConfig
) -> tuple[AgentConfig, list[dict[str, torch.Tensor]]]:
    """The target agent (`agent` with the sources' trunks as its feature extractor and ``settings.hidden`` above
    them) and each trunk's weights."""
    specs, states = [], []
    for source in sources:
        spec, state = trunk_of(source)
        specs.append(spec)
        states.append(state)
    policy = agent.policy.model_copy(
        update={"trunks": specs, "hidden": list(settings.hidden), "features": "auto", "features_dim": None}
    )
    return agent.model_copy(update={"policy": policy}), states


def trunk_of(source: SourceAgent) -> tuple[TrunkSpec, dict[str, torch.Tensor]]:
    """A source agent's trunk: its spec and weights."""
    own = source_agent_config(source)
    return source_trunk(source.state_dict, own.algo, own.policy.activation, source.scaling, str(source.path))


def check_trunk_fits(source: SourceAgent, observation_space: Any) -> None:
    """Fail before any run starts when a source's trunk cannot read the target's observations."""
    spec, state = trunk_of(source)
    check_loads(SourceTrunk(observation_space, spec), state, str(source.path), observation_space)


def load_and_freeze(
    model: BaseAlgorithm, states: list[dict[str, torch.Tensor]], sources: list[SourceAgent], freeze: list[str]
) -> LayerMapping:
    """Copy the trunks into the target, freeze them (and the layers `freeze` names) and say what became of every
    layer: the trunks copied and frozen, the rest new."""
    policy = model.policy
    holders = load_trunks(policy, states, [str(source.path) for source in sources])
    trunk_layers = [name for name in layer_names(policy) if any(_inside(name, h) for h in holders)]
    try:
        extra = layer_copies(policy, select_layers(policy, freeze)) if freeze else []
    except LayerSelectionError as error:
        raise ConfigError(f"`freeze`: {error}") from None
    frozen = freeze_agent(model, list(dict.fromkeys([*trunk_layers, *extra])))
    current = policy.state_dict()
    mapping = LayerMapping(frozen=frozen)
    for name in layer_names(policy):
        shapes = [tuple(current[key].shape) for key in current if key.rpartition(".")[0] == name]
        if name in trunk_layers:
            mapping.copied[name] = shapes
        else:
            mapping.reinitialised[name] = {"source": None, "target": shapes, "reason": NEW_LAYER}
    return mapping


def _inside(name: str, holder: str) -> bool:
    return name == holder or name.startswith(holder + ".")


def combine_record(sources: list[SourceAgent], digests: list[str]) -> dict[str, Any]:
    """What run.json records of the combined sources (the second's digest is checked on --resume)."""
    return {"combined": [{"source": str(s.path), "digest": d} for s, d in zip(sources, digests, strict=True)]}
