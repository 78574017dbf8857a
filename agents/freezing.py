"""What freezing and fine-tuning need to know about SB3 agents: their optimizers and the copies of each layer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from rltransfer.core.errors import ConfigError
from rltransfer.core.io import atomic_path
from rltransfer.core.layers import freeze_modules, layer_names, select_layers, unfreeze_modules
from rltransfer.core.optim import (
    SourcePenalty,
    build_optimizer,
    l1_strength,
    source_penalty,
    trainable_parameters,
)

# (prefix of a layer, prefix of another copy of it that must be frozen with it)
COPIES: tuple[tuple[str, str], ...] = (
    ("q_net.", "q_net_target."),  # DQN
    ("critic.", "critic_target."),  # SAC, TD3
    ("actor.", "actor_target."),  # TD3
    ("actor.features_extractor", "critic.features_extractor"),  # SAC/TD3 without a shared extractor
    ("critic.features_extractor", "actor.features_extractor"),
    ("features_extractor", "vf_features_extractor"),  # PPO/A2C with share_features_extractor=False
    ("pi_features_extractor", "vf_features_extractor"),
    ("vf_features_extractor", "pi_features_extractor"),
)


# target networks: updated from their online network by SB3 (copy or Polyak averaging), never by gradients
TARGET_COPIES: tuple[tuple[str, str], ...] = (
    ("q_net.", "q_net_target."),
    ("critic.", "critic_target."),
    ("actor.", "actor_target."),
)


@dataclass
class _OptimizerSlot:
    owner: nn.Module
    attribute: str
    module: nn.Module
    exclude_features_extractor: bool = False
    label: str = "policy"

    def parameters(self) -> list[nn.Parameter]:
        return [
            param
            for name, param in self.module.named_parameters()
            if not (self.exclude_features_extractor and "features_extractor" in name)
        ]


def optimizer_slots(model: BaseAlgorithm) -> list[_OptimizerSlot]:
    """Where SB3 keeps each optimizer of this agent and which module it trains."""
    policy = model.policy
    if hasattr(policy, "actor") and hasattr(policy, "critic") and hasattr(policy.critic, "optimizer"):
        shared = bool(getattr(policy, "share_features_extractor", False))
        return [
            _OptimizerSlot(policy.actor, "optimizer", policy.actor, label="actor"),
            _OptimizerSlot(
                policy.critic, "optimizer", policy.critic, exclude_features_extractor=shared, label="critic"
            ),
        ]
    if hasattr(policy, "q_net") and hasattr(policy, "q_net_target"):
        return [_OptimizerSlot(policy, "optimizer", policy.q_net)]
    return [_OptimizerSlot(policy, "optimizer", policy)]


def rebuild_optimizers(model: BaseAlgorithm, l1: float | None = None, keep_state: bool = False) -> None:
    """Give every SB3 optimizer of the agent a fresh instance over its trainable parameters only.

    Keeps the class and keyword arguments SB3 built it with (``policy.optimizer_class/kwargs``), so defaults such
    as Adam's ``eps=1e-5`` survive. No state (momentum, Adam moments) is carried over unless `keep_state` (used
    when unfreezing mid-training: parameters that were training keep theirs). ``l1`` defaults to the strength
    already attached.
    """
    policy = model.policy
    lr = model.lr_schedule(model._current_progress_remaining)
    for slot in optimizer_slots(model):
        old = getattr(slot.owner, slot.attribute)
        strength = l1_strength(old) if l1 is None else l1
        trainable = trainable_parameters(slot.parameters())
        if not trainable:
            algorithm = type(model).__name__.removeprefix("Consistent")
            raise ConfigError(
                f"Every parameter of the {slot.label} is frozen, but {algorithm} trains the {slot.label} "
                f"with its own optimizer: leave at least one {slot.label} layer trainable."
            )
        new = build_optimizer(trainable, policy.optimizer_class, lr, l1=strength, **policy.optimizer_kwargs)
        penalty = source_penalty(old)
        if penalty is not None:  # L2-SP's anchors stay the source's weights across freezing and unfreezing
            new.register_step_pre_hook(penalty)
        if keep_state:
            for param, state in old.state.items():
                if param.requires_grad:
                    new.state[param] = state
        setattr(slot.owner, slot.attribute, new)


def layer_copies(policy: nn.Module, names: Iterable[str]) -> list[str]:
    """The names plus every other copy of those layers in the policy (target networks, second extractors)."""
    existing = {name for name, _ in policy.named_modules(remove_duplicate=False)}
    result = list(dict.fromkeys(names))
    changed = True
    while changed:
        changed = False
        for name in list(result):
            for prefix, other in COPIES:
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
    _sync_target_copies(model.policy, names)
    rebuild_optimizers(model)
    return names


def is_target_copy(name: str) -> bool:
    """True for a layer inside a target network."""
    return any(name.startswith(target) for _, target in TARGET_COPIES)


def _sync_target_copies(policy: nn.Module, names: list[str]) -> None:
    """Give each frozen layer's target-network copy the online layer's values, so that SB3's target updates
    (a copy for DQN, Polyak averaging for SAC/TD3) keep it at the frozen value rather than drifting towards it."""
    modules = dict(policy.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name in names:
            for online, target in TARGET_COPIES:
                if name.startswith(online) and target + name[len(online) :] in modules:
                    modules[target + name[len(online) :]].load_state_dict(modules[name].state_dict())


@contextlib.contextmanager
def loadable_optimizers(model: BaseAlgorithm) -> Iterator[None]:
    """While saving, show SB3 optimizers over *all* parameters so plain ``PPO.load`` can read the file back.

    SB3 rebuilds each optimizer over every parameter when loading; an optimizer over the trainable subset would
    not match. The state of the trainable parameters is kept; frozen ones have none.
    """
    swapped = []
    for slot in optimizer_slots(model):
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


# the output layers of SB3's policies (a container resolves to the last Linear inside it)
_OUTPUTS = re.compile(r"^(action_net|value_net|actor\.mu|actor\.log_std|q_net\.q_net|critic\.qf\d+)$")
_EXTRACTORS = re.compile(
    r"^((pi_|vf_)?features_extractor|actor\.features_extractor|critic\.features_extractor)(\.|$)"
)


def output_layers(policy: nn.Module) -> list[str]:
    """The layers that produce an SB3 policy's outputs (action logits/means, values, Q-values), target copies excluded."""
    outputs = []
    for name, module in policy.named_modules():
        if not _OUTPUTS.match(name):
            continue
        if isinstance(module, nn.Linear):
            outputs.append(name)
        else:
            linears = [sub for sub, child in module.named_modules() if isinstance(child, nn.Linear)]
            if linears:
                outputs.append(f"{name}.{linears[-1]}")
    return outputs


def hidden_layers(policy: nn.Module) -> list[str]:
    """Every layer that is neither an output layer nor inside a target network."""
    outputs = set(output_layers(policy))
    return [name for name in layer_names(policy) if name not in outputs and not is_target_copy(name)]


def trunk_layers(policy: nn.Module) -> list[str]:
    """The shared feature layers: the feature extractors when they have weights (CNNs), else the first hidden
    layer of every network (the layers that read the observation)."""
    hidden = hidden_layers(policy)
    extractors = [name for name in hidden if _EXTRACTORS.match(name)]
    if extractors:
        return extractors
    firsts: dict[str, str] = {}
    for name in hidden:
        firsts.setdefault(name.rpartition(".")[0], name)
    return list(firsts.values())


def unfreeze_agent(model: BaseAlgorithm, names: Iterable[str]) -> None:
    """Unfreeze layers given by exact name (as :func:`freeze_agent` returned them) and extend the optimizers to
    them, keeping the optimizer state of the layers that were already training."""
    unfreeze_modules(model.policy, names)
    rebuild_optimizers(model, keep_state=True)


def save_model(model: BaseAlgorithm, path: str | Path) -> Path:
    """Save an SB3 agent atomically, in a form plain SB3 can load back (frozen layers included)."""
    path = Path(path)
    with atomic_path(path, suffix=".zip") as tmp, loadable_optimizers(model):
        model.save(tmp)
    return path


def decay_toward_source(model: BaseAlgorithm, copied: Iterable[str], strength: float) -> int:
    """L2-SP on an agent whose `copied` layers hold the source's weights now: every optimizer pulls them back
    toward these values (and new layers toward zero) with `strength`. Returns how many tensors are anchored."""
    modules = dict(model.policy.named_modules())
    own = dict(model.policy.named_parameters())  # parameters the policy holds itself (log_std)
    anchors = []
    for name in layer_copies(model.policy, list(copied)):
        if name in modules:
            anchors += [(param, param.detach()) for param in modules[name].parameters(recurse=False)]
        elif name in own:
            anchors.append((own[name], own[name].detach()))
    penalty = SourcePenalty(anchors, alpha=strength, beta=strength)
    for slot in optimizer_slots(model):
        getattr(slot.owner, slot.attribute).register_step_pre_hook(penalty)
    return len(anchors)
