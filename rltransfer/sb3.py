"""What freezing and fine-tuning need to know about SB3 agents: their optimizers and the copies of each layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from rltransfer.layers import freeze_modules, select_layers
from rltransfer.optim import build_optimizer, l1_strength, trainable_parameters

# (prefix of a layer, prefix of another copy of it that must be frozen with it)
_COPIES: tuple[tuple[str, str], ...] = (
    ("q_net.", "q_net_target."),  # DQN
    ("critic.", "critic_target."),  # SAC, TD3
    ("actor.", "actor_target."),  # TD3
    ("actor.features_extractor", "critic.features_extractor"),  # SAC/TD3 without a shared extractor
    ("critic.features_extractor", "actor.features_extractor"),
    ("features_extractor", "vf_features_extractor"),  # PPO/A2C with share_features_extractor=False
    ("pi_features_extractor", "vf_features_extractor"),
    ("vf_features_extractor", "pi_features_extractor"),
)


@dataclass
class _OptimizerSlot:
    owner: nn.Module
    attribute: str
    module: nn.Module
    exclude_features_extractor: bool = False

    def parameters(self) -> list[nn.Parameter]:
        return [
            param
            for name, param in self.module.named_parameters()
            if not (self.exclude_features_extractor and "features_extractor" in name)
        ]


def _optimizer_slots(model: BaseAlgorithm) -> list[_OptimizerSlot]:
    """Where SB3 keeps each optimizer of this agent and which module it trains."""
    policy = model.policy
    if hasattr(policy, "actor") and hasattr(policy, "critic") and hasattr(policy.critic, "optimizer"):
        shared = bool(getattr(policy, "share_features_extractor", False))
        return [
            _OptimizerSlot(policy.actor, "optimizer", policy.actor),
            _OptimizerSlot(policy.critic, "optimizer", policy.critic, exclude_features_extractor=shared),
        ]
    if hasattr(policy, "q_net") and hasattr(policy, "q_net_target"):
        return [_OptimizerSlot(policy, "optimizer", policy.q_net)]
    return [_OptimizerSlot(policy, "optimizer", policy)]


def rebuild_optimizers(model: BaseAlgorithm, l1: float | None = None) -> None:
    """Give every SB3 optimizer of the agent a fresh instance over its trainable parameters only.

    Keeps the class and keyword arguments SB3 built it with (``policy.optimizer_class/kwargs``), so defaults such
    as Adam's ``eps=1e-5`` survive; no state (momentum, Adam moments) is carried over. ``l1`` defaults to the
    strength already attached.
    """
    policy = model.policy
    lr = model.lr_schedule(model._current_progress_remaining)
    for slot in _optimizer_slots(model):
        old = getattr(slot.owner, slot.attribute)
        strength = l1_strength(old) if l1 is None else l1
        new = build_optimizer(
            trainable_parameters(slot.parameters()),
            policy.optimizer_class,
            lr,
            l1=strength,
            **policy.optimizer_kwargs,
        )
        setattr(slot.owner, slot.attribute, new)


def layer_copies(policy: nn.Module, names: Iterable[str]) -> list[str]:
    """The names plus every other copy of those layers in the policy (target networks, second extractors)."""
    existing = {name for name, _ in policy.named_modules(remove_duplicate=False)}
    result = list(dict.fromkeys(names))
    changed = True
    while changed:
        changed = False
        for name in list(result):
            for prefix, other in _COPIES:
                if name == prefix.rstrip(".") or name.startswith(prefix):
                    copy = other + name[len(prefix) :] if name.startswith(prefix) else other.rstrip(".")
                    if copy in existing and copy not in result:
                        result.append(copy)
                        changed = True
    return result


def freeze_agent(model: BaseAlgorithm, patterns: Iterable[str]) -> list[str]:
    """Freeze the selected layers of an SB3 agent and every copy of them, then rebuild its optimizers."""
    patterns = list(patterns)
    if not patterns:
        return []
    names = layer_copies(model.policy, select_layers(model.policy, patterns))
    freeze_modules(model.policy, names)
    rebuild_optimizers(model)
    return names


@contextlib.contextmanager
def loadable_optimizers(model: BaseAlgorithm) -> Iterator[None]:
    """While saving, show SB3 optimizers over *all* parameters so plain ``PPO.load`` can read the file back.

    SB3 rebuilds each optimizer over every parameter when loading; an optimizer over the trainable subset would
    not match. The state of the trainable parameters is kept; frozen ones have none.
    """
    swapped = []
    for slot in _optimizer_slots(model):
        current = getattr(slot.owner, slot.attribute)
        params = slot.parameters()
        if len(params) == sum(len(group["params"]) for group in current.param_groups):
            continue
        full = type(current)(params, **current.defaults)
        for param in params:
            if param in current.state:
                full.state[param] = current.state[param]
        full.param_groups[0]["lr"] = current.param_groups[0]["lr"]
        setattr(slot.owner, slot.attribute, full)
        swapped.append((slot, current))
    try:
        yield
    finally:
        for slot, current in swapped:
            setattr(slot.owner, slot.attribute, current)


def policy_state_dict(model: BaseAlgorithm) -> dict[str, torch.Tensor]:
    """The agent's policy weights, detached copies on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in model.policy.state_dict().items()}
