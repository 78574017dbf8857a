"""The algorithms rltransfer builds, with SB3's own defaults, and PPO/A2C with consistent dropout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer

from rltransfer.agents.dropout import MaskBank, dropout_layers


class ConsistentDropoutRolloutBuffer(RolloutBuffer):
    """RolloutBuffer that tells a :class:`MaskBank` which samples each minibatch holds."""

    mask_bank: MaskBank | None = None

    def _get_samples(self, batch_inds: np.ndarray, env=None):  # type: ignore[override]
        if self.mask_bank is not None:
            self.mask_bank.use(batch_inds)
        return super()._get_samples(batch_inds, env)


class _ConsistentDropoutMixin:
    """Update with one dropout mask per rollout sample; see :mod:`rltransfer.agents.dropout`."""

    recompute_old_log_probs = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rollout_buffer_class", ConsistentDropoutRolloutBuffer)
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        # saved agents must load with plain SB3 (which then picks its default buffer)
        return [*super()._excluded_save_params(), "rollout_buffer_class", "rollout_buffer_kwargs"]

    def train(self) -> None:
        layers = dropout_layers(self.policy)
        buffer = self.rollout_buffer
        if not layers or not isinstance(buffer, ConsistentDropoutRolloutBuffer):
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
        observations = buffer.swap_and_flatten(buffer.observations)
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


class ConsistentPPO(_ConsistentDropoutMixin, PPO):
    """PPO whose dropout masks are the same for a sample's old and new log-probabilities."""


class ConsistentA2C(_ConsistentDropoutMixin, A2C):
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
    "dqn": AlgorithmSpec(DQN, DQN, 1e-4, "adam", {}, (spaces.Discrete,), on_policy=False),
    "sac": AlgorithmSpec(SAC, SAC, 3e-4, "adam", {}, (spaces.Box,), on_policy=False),
    "td3": AlgorithmSpec(TD3, TD3, 1e-3, "adam", {}, (spaces.Box,), on_policy=False),
}
