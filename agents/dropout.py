"""Dropout for SB3 policies, with consistent masks for on-policy updates.

:func:`add_dropout` puts a :class:`MaskedDropout` after every hidden activation that follows a Linear layer, in
every network of a policy (actor, critic, Q-networks and their target copies). Dropout modules hold no
parameters, so saved agents keep SB3's own layer names and load with plain ``PPO.load``.

Dropout is active only in train mode: SB3 switches the policy to eval mode while collecting rollouts and while
evaluating, and to train mode for updates. Plain dropout in an update would compare the update's log-probabilities
under a random mask with the rollout's log-probabilities under no mask, so the PPO ratio is not 1 even before the
first step. :class:`MaskBank` fixes one mask per rollout sample for the whole update (every epoch and minibatch),
and the consistent PPO/A2C classes recompute the "old" log-probabilities under that same mask before the first
gradient step, so with learning rate 0 the ratio is exactly 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedDropout(nn.Module):
    """Inverted dropout that can draw its masks from a per-sample bank instead of fresh noise."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.bank_size: int | None = None
        self.bank: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.index is None:
            return F.dropout(x, self.p, training=True)
        if self.bank is None:
            keep = 1.0 - self.p
            probs = torch.full((self.bank_size or 0, *x.shape[1:]), keep, device=x.device, dtype=x.dtype)
            self.bank = torch.bernoulli(probs) / keep
        return x * self.bank[self.index]

    def extra_repr(self) -> str:
        return f"p={self.p}"


def add_dropout(policy: nn.Module, p: float) -> int:
    """Insert dropout of rate `p` after each hidden activation that follows a Linear; returns how many."""
    if p <= 0:
        return 0
    count = 0
    for path, module in list(policy.named_modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for index, ((_, previous), (name, child)) in enumerate(zip(children, children[1:], strict=False)):
            squashes_output = path.split(".")[-1] == "mu" and index + 2 == len(
                children
            )  # TD3: Linear, Tanh = action
            if isinstance(previous, nn.Linear) and _is_activation(child) and not squashes_output:
                setattr(module, name, nn.Sequential(child, MaskedDropout(p)))
                count += 1
    return count


def _is_activation(module: nn.Module) -> bool:
    return not any(True for _ in module.parameters()) and type(module).__module__.startswith(
        "torch.nn.modules.activation"
    )


def dropout_layers(policy: nn.Module) -> list[MaskedDropout]:
    """The policy's MaskedDropout modules."""
    return [module for module in policy.modules() if isinstance(module, MaskedDropout) and module.p > 0]


class MaskBank:
    """Context manager fixing one dropout mask per sample index for the duration of an update."""

    def __init__(self, layers: list[MaskedDropout], num_samples: int, device: torch.device) -> None:
        self.layers = layers
        self.num_samples = num_samples
        self.device = device

    def __enter__(self) -> MaskBank:
        for layer in self.layers:
            layer.bank_size, layer.bank, layer.index = self.num_samples, None, None
        return self

    def use(self, sample_indices) -> None:  # numpy array or tensor of flat buffer indices
        index = torch.as_tensor(sample_indices, device=self.device, dtype=torch.long)
        for layer in self.layers:
            layer.index = index

    def __exit__(self, *exc: object) -> None:
        for layer in self.layers:
            layer.bank_size, layer.bank, layer.index = None, None, None
