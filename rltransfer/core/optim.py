"""Optimizers over trainable parameters only, an L1 penalty, and L2-SP (weight decay toward the source)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from rltransfer.core.errors import ConfigError, did_you_mean

OptimizerName = Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch optimizer class for a config name such as ``adamw``."""
    try:
        return OPTIMIZERS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"Unknown optimizer `{name}`{did_you_mean(name.lower(), OPTIMIZERS)}; choose one of {', '.join(OPTIMIZERS)}."
        ) from None


def trainable_parameters(params: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that train, each once; frozen ones get their stale gradients cleared."""
    source = params.parameters() if isinstance(params, nn.Module) else params
    seen: set[int] = set()
    trainable = []
    for param in source:
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.requires_grad:
            trainable.append(param)
        else:
            param.grad = None
    return trainable


class L1Penalty:
    """Optimizer step pre-hook adding ``strength * sign(w)`` to the gradient of every weight matrix/kernel.

    This is the (sub)gradient of ``strength * sum(|w|)`` added to the loss; biases and norm scales (1-D tensors)
    are left alone, as is usual for weight penalties.
    """

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)

    def __call__(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None and param.dim() > 1:
                        param.grad.add_(torch.sign(param), alpha=self.strength)


class SourcePenalty:
    """Optimizer step pre-hook for L2-SP (Li, Grandvalet and Davoine, ICML 2018): weight decay toward the
    source's weights instead of toward zero.

    Adds ``alpha * (w - w_source)`` to the gradient of every parameter that has a source value (the gradient of
    ``alpha/2 * ||w - w_source||^2``: exactly zero at the source weights), and ``beta * w`` to the weight matrices
    of the others (new layers: plain L2). Frozen parameters are in no optimizer, so they are never touched.
    """

    def __init__(
        self, anchors: Iterable[tuple[nn.Parameter, torch.Tensor]], alpha: float, beta: float
    ) -> None:
        self.anchors = {id(param): anchor.detach().clone() for param, anchor in anchors}
        self.alpha, self.beta = float(alpha), float(beta)

    def __call__(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    anchor = self.anchors.get(id(param))
                    if anchor is not None:
                        param.grad.add_(param - anchor.to(param.device), alpha=self.alpha)
                    elif param.dim() > 1 and self.beta:
                        param.grad.add_(param, alpha=self.beta)


def source_penalty(optimizer: torch.optim.Optimizer) -> SourcePenalty | None:
    """The L2-SP penalty attached to an optimizer (None when there is none)."""
    for hook in optimizer._optimizer_step_pre_hooks.values():
        if isinstance(hook, SourcePenalty):
            return hook
    return None


def build_optimizer(
    params: nn.Module | Iterable[nn.Parameter],
    optimizer: str | type[torch.optim.Optimizer] = "adam",
    lr: float = 1e-3,
    *,
    l1: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters only (no state carried over), with an optional L1 penalty.

    ``kwargs`` go to the optimizer (``weight_decay`` is its L2 penalty, ``eps``, ``momentum``...).
    """
    cls = optimizer_class(optimizer) if isinstance(optimizer, str) else optimizer
    trainable = trainable_parameters(params)
    if not trainable:
        raise ConfigError("Every parameter is frozen: there is nothing left to train. Freeze fewer layers.")
    built = cls(trainable, lr=lr, **kwargs)
    if l1 > 0:
        built.register_step_pre_hook(L1Penalty(l1))
    return built


def l1_strength(optimizer: torch.optim.Optimizer) -> float:
    """The L1 strength attached to an optimizer by :func:`build_optimizer` (0 when none)."""
    for hook in optimizer._optimizer_step_pre_hooks.values():
        if isinstance(hook, L1Penalty):
            return hook.strength
    return 0.0
