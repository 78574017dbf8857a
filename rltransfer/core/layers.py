"""List, select, freeze and unfreeze the layers of any ``torch.nn.Module``.

A *layer* is a module that owns parameters directly (a Linear, a Conv, a BatchNorm...). Layers are selected by
exact module name, by glob pattern (``mlp_extractor.policy_net.*``) or with ``up_to:NAME`` ("every layer up to and
including NAME", in definition order). Selecting a parent module selects everything inside it.

Frozen modules have ``requires_grad=False`` and are pinned to eval mode: ``model.train()`` (which SB3 calls before
every update) leaves them in eval mode, so BatchNorm running statistics stay fixed and dropout inside them is off.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rltransfer.core.errors import LayerSelectionError, did_you_mean, short_list

UP_TO = "up_to:"
_PINNED = "_rltransfer_pinned_eval"


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model: its name, type, parameter shapes and counts, and whether it trains."""

    name: str
    type: str
    param_shapes: dict[str, tuple[int, ...]]
    num_params: int
    trainable: bool
    output_shape: tuple[int, ...] | None = None


def _modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if name]


def layer_names(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in definition order."""
    return [name for name, module in _modules(model) if any(True for _ in module.parameters(recurse=False))]


def list_layers(model: nn.Module, example_input: Any = None) -> list[LayerInfo]:
    """Describe every layer; with ``example_input`` (a tensor or tuple of tensors) also record output shapes."""
    output_shapes: dict[str, tuple[int, ...]] = {}
    if example_input is not None:
        output_shapes = _output_shapes(model, example_input)
    infos = []
    for name in layer_names(model):
        module = model.get_submodule(name)
        params = dict(module.named_parameters(recurse=False))
        infos.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                param_shapes={key: tuple(p.shape) for key, p in params.items()},
                num_params=sum(p.numel() for p in params.values()),
                trainable=all(p.requires_grad for p in params.values()),
                output_shape=output_shapes.get(name),
            )
        )
    return infos


def _output_shapes(model: nn.Module, example_input: Any) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in layer_names(model):

        def record(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)

        handles.append(model.get_submodule(name).register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def format_layers(infos: Sequence[LayerInfo]) -> str:
    """A plain-text table of :func:`list_layers` output."""
    rows = [("layer", "type", "parameters", "shapes", "output", "state")]
    for info in infos:
        shapes = " ".join(f"{key}{list(shape)}" for key, shape in info.param_shapes.items())
        output = str(list(info.output_shape)) if info.output_shape else "-"
        rows.append(
            (
                info.name,
                info.type,
                f"{info.num_params:,}",
                shapes,
                output,
                "trainable" if info.trainable else "frozen",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    total = sum(info.num_params for info in infos)
    frozen = sum(info.num_params for info in infos if not info.trainable)
    lines.append(f"{len(infos)} layers, {total:,} parameters, {frozen:,} frozen")
    return "\n".join(lines)


def select_layers(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Resolve names, globs and ``up_to:NAME`` selectors to the top-most matching module names.

    Raises :class:`LayerSelectionError` naming the pattern and listing the model's layers when one matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    modules = _modules(model)
    names = [name for name, _ in modules]
    layers = layer_names(model)
    selected: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise LayerSelectionError(f"Layer selector {pattern!r} is not a non-empty string.")
        if pattern.startswith(UP_TO):
            matched = _up_to(pattern, names, layers)
        else:
            matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not any(_holds_parameters(model, name) for name in matched):
            # only names a selector could usefully select: modules holding parameters (not activations)
            choices = list(dict.fromkeys(layers + [n for n in names if n and _holds_parameters(model, n)]))
            if pattern.startswith(UP_TO):
                choices = [UP_TO + name for name in choices]
            raise LayerSelectionError(
                f"The layer selector `{pattern}` matches no layer of this {type(model).__name__}"
                f"{did_you_mean(pattern, choices)}. Its layers are: {short_list(layers)}. "
                "Use an exact name, a glob such as `name.*`, or `up_to:NAME`; `rltransfer layers` prints them."
            )
        selected.extend(name for name in matched if name not in selected)
    return _collapse(model, _top_most(selected))


def _up_to(pattern: str, names: list[str], layers: list[str]) -> list[str]:
    target = pattern[len(UP_TO) :].strip()
    if target not in names:
        return []
    # the last module at or inside the target, in definition order
    end = max(i for i, name in enumerate(names) if name == target or name.startswith(target + "."))
    # named_modules is a pre-order walk: what comes before the target is either wholly before it or one of its
    # ancestors, which must not be selected as a whole
    return [name for name in names[: end + 1] if not target.startswith(name + ".")]


def _holds_parameters(model: nn.Module, name: str) -> bool:
    return any(True for _ in model.get_submodule(name).parameters())


def _top_most(names: list[str]) -> list[str]:
    chosen = set(names)
    return [
        name for name in names if not any(name.startswith(other + ".") for other in chosen if other != name)
    ]


def _collapse(model: nn.Module, names: list[str]) -> list[str]:
    """Replace a full set of siblings by their parent, so reports say `a.b` rather than `a.b.0 ... a.b.3`."""
    chosen = list(names)
    changed = True
    while changed:
        changed = False
        for name in list(chosen):
            parent = name.rpartition(".")[0]
            if not parent or parent in chosen:
                continue
            if any(True for _ in model.get_submodule(parent).parameters(recurse=False)):
                continue  # the parent's own parameters were not selected
            children = [f"{parent}.{child}" for child, _ in model.get_submodule(parent).named_children()]
            if all(child in chosen for child in children):
                position = min(chosen.index(child) for child in children)
                chosen = [n for n in chosen if n not in children]
                chosen.insert(position, parent)
                changed = True
                break
    return chosen


def freeze(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Freeze the selected modules (no gradients, pinned to eval mode) and return their names. A selection that
    covers every sub-module holding parameters (``"*"``) freezes the whole model, including parameters the model
    holds itself (a ViT's ``class_token``)."""
    names = select_layers(model, patterns)
    freeze_modules(model, names)
    if _covers_children(model, set(names)):
        for param in model.parameters(recurse=False):
            param.requires_grad_(False)
            param.grad = None
    return names


def _covers_children(model: nn.Module, names: set[str]) -> bool:
    """True when every direct child of the model that holds parameters is selected or lies wholly under the
    selection (a name selected in it for each of its parameter-holding parts)."""
    for child_name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if child_name in names:
            continue
        owners = {
            f"{child_name}.{name}" if name else child_name
            for name, module in child.named_modules()
            if any(True for _ in module.parameters(recurse=False))
        }
        if not all(any(owner == n or owner.startswith(n + ".") for n in names) for owner in owners):
            return False
    return True


def freeze_modules(model: nn.Module, names: Iterable[str]) -> None:
    """Freeze modules given by exact name (no pattern matching)."""
    for name in names:
        module = model.get_submodule(name)
        for param in module.parameters():
            param.requires_grad_(False)
            param.grad = None
        _pin_eval(module)
    return names


def unfreeze(model: nn.Module, patterns: str | Iterable[str] | None = None) -> list[str]:
    """Make the selected modules (default: the whole model) trainable again; they follow the model's mode."""
    names = [""] if patterns is None else select_layers(model, patterns)
    unfreeze_modules(model, names)
    return layer_names(model) if patterns is None else names


def unfreeze_modules(model: nn.Module, names: Iterable[str]) -> None:
    """Unfreeze modules given by exact name ("" is the whole model), no pattern matching."""
    for name in names:
        module = model.get_submodule(name) if name else model
        split_pinned_ancestors(model, name)
        for param in module.parameters():
            param.requires_grad_(True)
        for sub in module.modules():
            unpin_eval(sub)
        nn.Module.train(module, model.training)


def is_frozen(module: nn.Module) -> bool:
    """True when the module has parameters and none of them trains."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose parameters are all frozen."""
    return [name for name in layer_names(model) if is_frozen(model.get_submodule(name))]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts, each shared tensor counted once."""
    trainable = frozen = 0
    for param in model.parameters():
        if param.requires_grad:
            trainable += param.numel()
        else:
            frozen += param.numel()
    return trainable, frozen


class _StayInEval:
    """Stands in for a frozen module's ``train()``: whatever mode is asked for, the module stays in eval mode.

    A module-level class (not a bound function) so that frozen models still pickle with ``torch.save``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def _keep_eval_hook(module: nn.Module, _inputs: Any) -> None:
    if module.training:
        nn.Module.train(module, False)


def _pin_eval(module: nn.Module) -> None:
    if getattr(module, _PINNED, False):
        return
    nn.Module.train(module, False)
    module.train = _StayInEval(module)  # type: ignore[method-assign]
    module.register_forward_pre_hook(_keep_eval_hook)
    object.__setattr__(module, _PINNED, True)


def unpin_eval(module: nn.Module) -> None:
    """Let a pinned module follow train()/eval() again."""
    if not getattr(module, _PINNED, False):
        return
    module.__dict__.pop("train", None)
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _keep_eval_hook:
            del module._forward_pre_hooks[key]
    object.__setattr__(module, _PINNED, False)


def split_pinned_ancestors(model: nn.Module, name: str) -> None:
    """Unpin the frozen ancestors of `name`, keeping their other children pinned (they stay frozen)."""
    if not name:
        return
    parts = name.split(".")
    splitting = False
    for depth in range(1, len(parts)):
        ancestor_name = ".".join(parts[:depth])
        ancestor = model.get_submodule(ancestor_name)
        # below a pinned ancestor every module on the path to `name` must be split too
        splitting = splitting or getattr(ancestor, _PINNED, False)
        if not splitting:
            continue
        unpin_eval(ancestor)
        for child_name, child in ancestor.named_children():
            full = f"{ancestor_name}.{child_name}"
            if name != full and not name.startswith(full + "."):
                _pin_eval(child)
