"""Find a model's output layer and replace it with a freshly initialised one of another size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rltransfer.core.errors import LayerSelectionError, did_you_mean, short_list
from rltransfer.core.layers import split_pinned_ancestors

# Where well-known models keep their output layer, tried in this order before the generic fallback
# (the last nn.Linear in definition order). Containers resolve to the last Linear inside them.
KNOWN_HEADS: tuple[str, ...] = (
    "action_net",  # SB3 actor-critic policies (PPO, A2C)
    "q_net.q_net",  # SB3 DQN
    "fc",  # torchvision ResNet, GoogLeNet, Inception-v3
    "heads.head",  # torchvision ViT
    "classifier",  # torchvision MobileNet, EfficientNet, ConvNeXt, VGG, DenseNet
    "head",  # timm-style models
)


def find_head(model: nn.Module) -> str:
    """Name of the model's output Linear layer: a known layout first, else the last Linear defined."""
    modules = dict(model.named_modules())
    for candidate in KNOWN_HEADS:
        module = modules.get(candidate)
        if module is None:
            continue
        if isinstance(module, nn.Linear):
            return candidate
        inner = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
        if inner:
            return f"{candidate}.{inner[-1]}"
    linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linears:
        raise LayerSelectionError(
            f"{type(model).__name__} has no nn.Linear layer to replace as its head. "
            "Pass the head's name explicitly: replace_head(model, n, name='...')."
        )
    return linears[-1]


def replace_head(
    model: nn.Module,
    num_outputs: int,
    name: str | None = None,
    *,
    example_input: Any = None,
) -> nn.Linear:
    """Put a freshly initialised ``nn.Linear(in_features, num_outputs)`` in place of the model's head.

    ``name`` picks the layer (default: :func:`find_head`). The new layer keeps the old one's input size, bias,
    dtype and device, and trains, as any new PyTorch module does, even when the old head (or the whole model) was
    frozen: after ``freeze(model, "*")`` only the new head learns. With ``example_input`` a forward pass checks
    that the output now ends in ``num_outputs``. Returns the new layer.
    """
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}.")
    name = name or find_head(model)
    modules = dict(model.named_modules())
    old = modules.get(name)
    if not isinstance(old, nn.Linear):
        linears = [key for key, module in modules.items() if isinstance(module, nn.Linear)]
        found = "no such layer" if old is None else f"a {type(old).__name__}"
        raise LayerSelectionError(
            f"Cannot replace head `{name}`: {found}{did_you_mean(name, linears)}. "
            f"The model's Linear layers are: {short_list(linears)}."
        )
    new = nn.Linear(old.in_features, num_outputs, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    split_pinned_ancestors(
        model, name
    )  # a frozen container keeps its other children frozen, not the new head
    setattr(parent, child_name, new)
    new.train(model.training)
    if example_input is not None:
        _verify_outputs(model, num_outputs, example_input)
    return new


def _verify_outputs(model: nn.Module, num_outputs: int, example_input: Any) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = example_input if isinstance(example_input, tuple) else (example_input,)
            output = model(*inputs)
    finally:
        model.train(was_training)
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.shape[-1] != num_outputs:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise LayerSelectionError(
            f"After replacing the head the model outputs {shape}, not {num_outputs} values: the layer replaced "
            "is not the one that produces the output. Name the head explicitly with name='...'."
        )
