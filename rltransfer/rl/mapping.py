"""Weight mapping: which layers of a source agent fit a target agent, copied by name and shape.

Like timm's pretrained-weight loading, :func:`plan_mapping` is a pure function of two state dicts and options;
:func:`map_weights` applies its plan to a network. Shapes that differ are re-initialised and labelled (an input
adapter for another observation shape, a new head for another action count).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rltransfer.agents.freezing import COPIES
from rltransfer.core.errors import ConfigError, did_you_mean, short_list
from rltransfer.core.tables import text_table


@dataclass
class LayerMapping:
    """Which target layers were copied from the source, which were re-initialised (and why), which were frozen."""

    copied: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    reinitialised: dict[str, dict[str, Any]] = field(default_factory=dict)
    unused: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    """Target layers copied from a source layer of another name (``layer_map``)."""

    def format(self) -> str:
        """A table a person reads (within 100 columns): one row per layer with its fate and shapes, then why each
        re-initialised layer is new and where each renamed one came from."""
        rows = [("layer", "action", "source shape", "target shape")]
        notes = []
        for name, shapes in self.copied.items():
            action = "copied (renamed)" if name in self.renamed else "copied"
            action += ", frozen" if covered(name, self.frozen) else ""
            rows.append((name, action, _shapes(shapes), _shapes(shapes)))
            if name in self.renamed:
                notes.append(f"  {name}: copied from {self.renamed[name]}")
        for name, info in self.reinitialised.items():
            action = "re-initialised" + (", frozen" if covered(name, self.frozen) else "")
            rows.append(
                (name, action, _shapes(info["source"]) if info["source"] else "-", _shapes(info["target"]))
            )
            notes.append(f"  {name}: re-initialised ({info['reason']})")
        for name, shapes in self.unused.items():
            rows.append((name, "dropped (not in target)", _shapes(shapes), "-"))
        summary = (
            f"{len(self.copied)} layers copied, {len(self.reinitialised)} re-initialised, "
            f"{len(self.unused)} dropped; frozen: {', '.join(self.frozen) or 'none'}"
        )
        return "\n".join([text_table(rows), *notes, summary])

    def as_dict(self) -> dict[str, Any]:
        return {
            "copied": {k: [list(s) for s in v] for k, v in self.copied.items()},
            "reinitialised": self.reinitialised,
            "unused": {k: [list(s) for s in v] for k, v in self.unused.items()},
            "frozen": self.frozen,
            "renamed": self.renamed,
        }


def covered(name: str, prefixes: list[str]) -> bool:
    """True when `name` is one of the layers or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return " ".join(str(list(shape)) for shape in shapes)


def _group(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        # a parameter the model holds itself (PPO's log_std) has no layer: its row is named after it
        groups.setdefault(key.rpartition(".")[0] or key, []).append(key)
    return groups


def plan_mapping(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    reinit: list[str] | None = None,
    layer_map: dict[str, str] | None = None,
) -> LayerMapping:
    """Which target layers take which source layer's weights, and why the others keep their initialisation.

    A pure function of the two state dicts and the options (nothing is copied): every target layer whose
    tensors all exist in the source with the same shapes is *copied*; layers named in `reinit` (or inside them)
    are re-initialised even when they fit; `layer_map` (target layer -> source layer) copies a layer from a
    source layer of another name, and its shapes must match. A layer whose shapes differ is labelled an *input
    adapter* when only its input size differs (another observation shape) and a *new head* when its output size
    differs (another action count).
    """
    reinit = reinit or []
    target_groups, source_groups = _group(list(target_state)), _group(list(source_state))
    pairs = _expand_layer_map(layer_map or {}, target_groups, source_groups)
    mapping = LayerMapping()
    seen: set[int] = set()  # SB3 registers a shared extractor under several names: list it once
    for layer, keys in target_groups.items():
        pointer = target_state[keys[0]].data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        source_layer = pairs.get(layer, layer)
        source_keys = [source_layer + key[len(layer) :] for key in keys]
        target_shapes = [tuple(target_state[k].shape) for k in keys]
        source_shapes = [tuple(source_state[k].shape) for k in source_keys if k in source_state]
        if layer in pairs and source_shapes != target_shapes:
            raise ConfigError(
                f"`layer_map` maps target layer `{layer}` {_shapes(target_shapes)} to source layer "
                f"`{source_layer}` {_shapes(source_shapes)}: the shapes differ, so the weights cannot be "
                "copied. Map it to a layer of the same shape or remove the entry (it is then re-initialised)."
            )
        if covered(layer, reinit):
            reason = "asked"
        elif len(source_shapes) < len(keys):
            reason = "not in source"
        elif source_shapes != target_shapes:
            reason = _shape_change(source_shapes, target_shapes)
        else:
            mapping.copied[layer] = target_shapes
            if source_layer != layer:
                mapping.renamed[layer] = source_layer
            continue
        mapping.reinitialised[layer] = {"reason": reason, "source": source_shapes, "target": target_shapes}
    used = set(pairs.values())
    for layer, keys in source_groups.items():
        if layer not in target_groups and layer not in used:
            mapping.unused[layer] = [tuple(source_state[k].shape) for k in keys]
    return mapping


def map_weights(
    source_state: Mapping[str, torch.Tensor],
    target: nn.Module,
    reinit: list[str] | None = None,
    layer_map: dict[str, str] | None = None,
) -> LayerMapping:
    """Copy, in place, every target layer that :func:`plan_mapping` finds a source layer for; the rest keep
    their fresh initialisation. Returns the mapping (what was copied, re-initialised and why)."""
    target_state = target.state_dict()
    mapping = plan_mapping(source_state, target_state, reinit, layer_map)
    groups = _group(list(target_state))
    with torch.no_grad():
        for layer in mapping.copied:
            source_layer = mapping.renamed.get(layer, layer)
            for key in groups[layer]:
                source = source_state[source_layer + key[len(layer) :]]
                target_state[key].copy_(source.to(target_state[key].dtype))
    return mapping


def _shape_change(source: list[tuple[int, ...]], target: list[tuple[int, ...]]) -> str:
    """Why a layer cannot be copied, in the terms of transfer: another input (adapter) or output (head) size."""
    if len(source) != len(target) or any(len(a) != len(b) for a, b in zip(source, target, strict=True)):
        return "shape differs"
    weight_source, weight_target = source[0], target[0]
    if (
        len(weight_source) >= 2
        and weight_source[0] == weight_target[0]
        and weight_source[1] != weight_target[1]
    ):
        unit = "input channels" if len(weight_source) == 4 else "inputs"
        return f"input adapter: {weight_source[1]} -> {weight_target[1]} {unit}"
    if weight_source[0] != weight_target[0] and weight_source[1:] == weight_target[1:]:
        return f"new head: {weight_source[0]} -> {weight_target[0]} outputs"
    return "shape differs"


def _expand_layer_map(
    layer_map: dict[str, str], target_groups: dict[str, list[str]], source_groups: dict[str, list[str]]
) -> dict[str, str]:
    """Check a user's ``layer_map`` against both networks and add the other copies of each pair (target
    networks, second feature extractors), which must follow their online layer."""
    for target_layer, source_layer in layer_map.items():
        if target_layer not in target_groups:
            raise ConfigError(
                f"`layer_map`: `{target_layer}` is not a layer of the target agent"
                f"{did_you_mean(target_layer, target_groups)}. Its layers are: {short_list(target_groups)}."
            )
        if source_layer not in source_groups:
            raise ConfigError(
                f"`layer_map.{target_layer}`: `{source_layer}` is not a layer of the source agent"
                f"{did_you_mean(source_layer, source_groups)}. Its layers are: {short_list(source_groups)}."
            )
    pairs = dict(layer_map)
    for target_layer, source_layer in layer_map.items():
        for prefix, other in COPIES:
            if target_layer.startswith(prefix) and source_layer.startswith(prefix):
                twin_target = other + target_layer[len(prefix) :]
                twin_source = other + source_layer[len(prefix) :]
                if twin_target in target_groups and twin_source in source_groups:
                    pairs.setdefault(twin_target, twin_source)
    return pairs


def describe_weights(state: Mapping[str, torch.Tensor]) -> list[str]:
    """``name[shape]`` of every weight tensor, for error messages."""
    return [f"{k}{list(v.shape)}" for k, v in state.items() if k.endswith("weight")]
