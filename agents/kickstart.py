"""Kickstarting: while fine-tuning, a distillation loss pulls the target's policy toward the source's on the
target's own states, with a weight that decays to zero (Schmitt et al., 2018, "Kickstarting Deep Reinforcement
Learning"; for DQN, the policy distillation of Rusu et al., 2016, on Q-values).

PPO and A2C: for every sample of the update, ``weight * KL(source || target)`` of their action distributions
(categorical for discrete actions, diagonal Gaussian for continuous ones); the source's distributions for a
rollout are computed once, before the update. DQN: ``weight * KL(softmax(q_source / T) || softmax(q_target / T))``
on each replayed batch. The loss enters SB3's own update: its gradient is added in the same backward pass as
SB3's loss (so gradient clipping sees both), and ``train/kickstart_loss`` and ``train/kickstart_weight`` are
logged. The weight at environment step t is ``weight * (1 - t / steps)`` (``linear``) or ``weight`` until
``steps`` (``constant``), and 0 after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from rltransfer.core.errors import ConfigError

KICKSTART_ALGOS = ("ppo", "a2c", "dqn")


class _AddLoss(torch.autograd.Function):
    """Identity on `carrier` whose backward also sends a gradient of 1 into `loss`: adds `loss` to whatever
    objective the carrier ends up in, without changing the code that computes that objective."""

    @staticmethod
    def forward(ctx: Any, carrier: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.loss_shape = loss.shape
        return carrier.view_as(carrier)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.ones(ctx.loss_shape, dtype=grad.dtype, device=grad.device)


@dataclass
class Kickstart:
    """A source policy (`teacher`, frozen) and the schedule of its distillation loss's weight."""

    teacher: nn.Module
    weight: float
    steps: int
    schedule: str = "linear"
    temperature: float = 0.01
    losses: list[float] = field(default_factory=list)

    def weight_at(self, timesteps: int) -> float:
        """The loss weight after `timesteps` environment steps."""
        if timesteps >= self.steps:
            return 0.0
        if self.schedule == "constant":
            return self.weight
        return self.weight * (1.0 - timesteps / self.steps)

    @contextlib.contextmanager
    def in_update(self, model: BaseAlgorithm) -> Iterator[None]:
        """During one call of SB3's ``train``: the distillation loss joins every gradient step."""
        weight = self.weight_at(model.num_timesteps)
        self.losses = []
        if weight <= 0.0:
            yield
            model.logger.record("train/kickstart_weight", 0.0)
            return
        if hasattr(model, "q_net"):
            hook = model.q_net.register_forward_hook(self._q_value_hook(weight))
        else:
            hook = model.policy.action_net.register_forward_hook(self._policy_hook(model, weight))
        try:
            yield
        finally:
            hook.remove()
        model.logger.record("train/kickstart_weight", weight)
        if self.losses:
            model.logger.record("train/kickstart_loss", float(np.mean(self.losses)))

    def _attach(self, carrier: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        self.losses.append(float(loss.detach()))
        return _AddLoss.apply(carrier, loss)

    def _q_value_hook(self, weight: float):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], q_values: torch.Tensor) -> Any:
            if not torch.is_grad_enabled():
                return None
            with torch.no_grad():
                teacher = torch.log_softmax(self.teacher(inputs[0]) / self.temperature, dim=1)
            student = torch.log_softmax(q_values / self.temperature, dim=1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            return self._attach(q_values, weight * kl)

        return hook

    def _policy_hook(self, model: BaseAlgorithm, weight: float):
        buffer = model.rollout_buffer
        policy = model.policy
        teacher_out = self._teacher_outputs(model)
        continuous = isinstance(model.action_space, spaces.Box)

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> Any:
            indices = getattr(buffer, "current_indices", None)
            if not torch.is_grad_enabled() or indices is None:
                return None
            teacher = torch.as_tensor(teacher_out[indices], device=output.device)
            if continuous:
                size = output.shape[1]
                source = torch.distributions.Normal(teacher[:, :size], teacher[:, size:])
                target = torch.distributions.Normal(output, policy.log_std.exp().expand_as(output))
                kl = torch.distributions.kl_divergence(source, target).sum(dim=1).mean()
            else:
                kl = F.kl_div(
                    torch.log_softmax(output, dim=1), teacher, log_target=True, reduction="batchmean"
                )
            return self._attach(output, weight * kl)

        return hook

    def _teacher_outputs(self, model: BaseAlgorithm) -> np.ndarray:
        """The source's action distribution for every sample of the rollout, in the buffer's flat order:
        log-probabilities (discrete) or means then standard deviations (continuous)."""
        buffer = model.rollout_buffer
        observations = buffer.swap_and_flatten(buffer.observations)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(observations), 1024):
                obs = torch.as_tensor(observations[start : start + 1024], device=model.device)
                distribution = self.teacher.get_distribution(obs).distribution
                if isinstance(distribution, torch.distributions.Normal):
                    chunks.append(torch.cat([distribution.mean, distribution.stddev], dim=1).cpu().numpy())
                else:
                    chunks.append(torch.log_softmax(distribution.logits, dim=1).cpu().numpy())
        return np.concatenate(chunks)


def kickstart_from(
    model: BaseAlgorithm, agent: Any, source_state: dict[str, torch.Tensor], source_name: Any, budget: int
) -> Kickstart:
    """The kickstarting of a transfer's `model` (built from `agent`, an AgentConfig) from the source's weights."""
    settings = agent.kickstart
    if agent.algo not in KICKSTART_ALGOS or not hasattr(model, "kickstart"):
        raise ConfigError(
            f"`agent.kickstart` distils the source's policy in PPO, A2C and DQN updates on array observations; this "
            f"transfer is {agent.algo.upper()} on {model.observation_space}. Set `agent.kickstart.weight: 0`."
        )
    if not isinstance(model.action_space, (spaces.Discrete, spaces.Box)):
        raise ConfigError(
            "`agent.kickstart` compares categorical or Gaussian action distributions; the target's actions are "
            f"{model.action_space}. Set `agent.kickstart.weight: 0`."
        )
    if getattr(model, "use_sde", False):
        raise ConfigError(
            "`agent.kickstart` compares Gaussian action distributions, which gSDE's state-dependent noise is not. "
            "Set `agent.hyperparams.use_sde: false` or `agent.kickstart.weight: 0`."
        )
    teacher = build_teacher(model, source_state, str(source_name))
    steps = settings.steps or budget
    return Kickstart(teacher, settings.weight, steps, settings.schedule, settings.temperature)


def build_teacher(model: BaseAlgorithm, source_state: dict[str, torch.Tensor], source_name: str) -> nn.Module:
    """The source as a frozen network over the target's observations and actions (the Q-network for DQN)."""
    policy = source_policy(model, source_state, source_name, "agent.kickstart")
    return policy.q_net if hasattr(policy, "q_net") else policy


def source_policy(
    model: BaseAlgorithm, source_state: dict[str, torch.Tensor], source_name: str, setting: str
) -> nn.Module:
    """The source as a frozen policy over the target's observations and actions: a copy of the target's policy
    holding every one of the source's tensors. Any tensor that does not fit (other observations or actions) is an
    error naming `setting`: the source has to act in the target game."""
    import copy

    policy = copy.deepcopy(model.policy)
    target = policy.state_dict()
    misfits = [
        f"{key}: {list(tensor.shape)} in the source, {list(target[key].shape)} in the target"
        for key, tensor in source_state.items()
        if key in target and tuple(tensor.shape) != tuple(target[key].shape)
    ]
    missing = sorted(set(target) - set(source_state))
    if misfits or missing:
        detail = misfits[0] if misfits else f"the target's {missing[0]} is not in the source"
        raise ConfigError(
            f"`{setting}`: the source {source_name} cannot act in the target game ({detail}); it needs the source "
            "and the target to have the same observation and action spaces (and the same network). Remove "
            f"`{setting}` for this target, or transfer without it."
        )
    policy.load_state_dict(source_state, strict=False)
    policy.set_training_mode(False)
    for param in policy.parameters():
        param.requires_grad_(False)
    return policy
