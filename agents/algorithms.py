"""The algorithms rltransfer builds, with SB3's own defaults; PPO/A2C with consistent dropout and a frozen
trunk computed once per rollout."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from rltransfer.agents.dropout import MaskBank, dropout_layers
from rltransfer.agents.kickstart import Kickstart
from rltransfer.agents.trunk_cache import CachingRolloutBuffer, frozen_trunk


class _ConsistentUpdateMixin:
    """Update with one dropout mask per rollout sample (see :mod:`rltransfer.agents.dropout`) and a frozen trunk's
    outputs computed once per rollout (see :mod:`rltransfer.agents.trunk_cache`; ``cache_frozen_trunk = False``
    on an agent turns that off)."""

    recompute_old_log_probs = True
    consistent_dropout = True
    cache_frozen_trunk = True
    kickstart: Kickstart | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rollout_buffer_class", CachingRolloutBuffer)
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        # saved agents load with plain SB3 (which picks its default buffer); the trunk cache changes speed, not
        # results; the kickstart teacher is the source, rebuilt from it by the transfer that attaches it
        excluded = ["rollout_buffer_class", "rollout_buffer_kwargs", "cache_frozen_trunk", "kickstart"]
        return [*super()._excluded_save_params(), *excluded]

    def train(self) -> None:
        buffer = self.rollout_buffer
        if not isinstance(buffer, CachingRolloutBuffer):  # a buffer class given by the user
            super().train()  # type: ignore[misc]
            return
        trunk = frozen_trunk(self.policy) if self.cache_frozen_trunk else None
        batch_size = getattr(self, "batch_size", None) or buffer.buffer_size * buffer.n_envs
        layers = dropout_layers(self.policy) if self.consistent_dropout else []
        kickstart = self.kickstart.in_update(self) if self.kickstart is not None else contextlib.nullcontext()
        with kickstart, trunk.in_update(buffer, batch_size) if trunk else contextlib.nullcontext():
            if not layers:
                super().train()  # type: ignore[misc]
                return
            with MaskBank(layers, buffer.buffer_size * buffer.n_envs, self.device) as bank:
                if self.recompute_old_log_probs:
                    self._recompute_log_probs(bank)
                buffer.mask_bank = bank
                try:
                    super().train()  # type: ignore[misc]
                finally:
                    buffer.mask_bank = None

    def _recompute_log_probs(self, bank: MaskBank) -> None:
        """Old log-probabilities of the stored actions under each sample's mask, before any gradient step."""
        buffer = self.rollout_buffer
        if buffer.generator_ready:
            raise RuntimeError("the rollout buffer was read before the update")
        cached = buffer.trunk_features  # a frozen trunk's outputs stand in for the observations
        observations = buffer.swap_and_flatten(buffer.observations) if cached is None else cached
        actions = buffer.swap_and_flatten(buffer.actions)
        total = len(observations)
        batch = self.batch_size or total
        log_probs = np.empty(total, dtype=np.float32)
        self.policy.set_training_mode(True)
        with torch.no_grad():
            for start in range(0, total, batch):
                index = np.arange(start, min(start + batch, total))
                bank.use(index)
                action = buffer.to_torch(actions[index])
                if isinstance(self.action_space, spaces.Discrete):
                    action = action.long().flatten()
                _, log_prob, _ = self.policy.evaluate_actions(buffer.to_torch(observations[index]), action)
                log_probs[index] = log_prob.cpu().numpy()
        # back to the buffer's (step, env) layout; flat index = env * buffer_size + step
        buffer.log_probs = log_probs.reshape(buffer.n_envs, buffer.buffer_size).T.copy()


class TransferDQN(DQN):
    """SB3's DQN that can be kickstarted from a source's Q-values (see :mod:`rltransfer.agents.kickstart`)."""

    kickstart: Kickstart | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "kickstart"]

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if self.kickstart is None:
            super().train(gradient_steps, batch_size)
            return
        with self.kickstart.in_update(self):
            super().train(gradient_steps, batch_size)


class ConsistentPPO(_ConsistentUpdateMixin, PPO):
    """PPO whose dropout masks are the same for a sample's old and new log-probabilities."""


class ConsistentA2C(_ConsistentUpdateMixin, A2C):
    """A2C whose dropout mask is fixed per rollout sample during the update."""

    recompute_old_log_probs = False  # A2C has no ratio: only the update's masks need fixing


@dataclass(frozen=True)
class AlgorithmSpec:
    """How to build one algorithm: its class, SB3's default optimizer and learning rate, and its policy kind."""

    cls: type[BaseAlgorithm]
    sb3_cls: type[BaseAlgorithm]
    default_lr: float
    default_optimizer: str
    default_optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    action_spaces: tuple[type[spaces.Space], ...] = (
        spaces.Discrete,
        spaces.Box,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    on_policy: bool = True


ALGORITHMS: dict[str, AlgorithmSpec] = {
    # SB3: ActorCriticPolicy adds eps=1e-5 to Adam when no optimizer_kwargs are given
    "ppo": AlgorithmSpec(ConsistentPPO, PPO, 3e-4, "adam", {"eps": 1e-5}),
    # SB3: A2C uses RMSprop(alpha=0.99, eps=1e-5, weight_decay=0) by default
    "a2c": AlgorithmSpec(
        ConsistentA2C, A2C, 7e-4, "rmsprop", {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0.0}
    ),
    "dqn": AlgorithmSpec(TransferDQN, DQN, 1e-4, "adam", {}, (spaces.Discrete,), on_policy=False),
    "sac": AlgorithmSpec(SAC, SAC, 3e-4, "adam", {}, (spaces.Box,), on_policy=False),
    "td3": AlgorithmSpec(TD3, TD3, 1e-3, "adam", {}, (spaces.Box,), on_policy=False),
}
