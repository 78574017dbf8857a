"""A frozen trunk computed once per rollout, for PPO and A2C.

When an actor-critic policy's feature extractor is frozen (and, optionally, the first layers of its actor and
critic networks), its outputs for a rollout do not change during the update: PPO would otherwise compute them
again in every minibatch of every epoch. :class:`FrozenTrunk` computes them once, without gradients, and the
update reads them from the rollout buffer in place of the observations; only the trainable layers run in the
minibatches, so no forward or backward pass goes through the frozen part more than once per rollout.

The update is the same as without the reuse (same minibatches, losses and gradients, up to floating-point
rounding of a differently batched forward pass). It is used only where that holds: SB3's own
``ActorCriticPolicy.evaluate_actions`` and ``MlpExtractor``, array observations, and a frozen part without
dropout or normalisation layers (whose output depends on train/eval mode or moves running statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from rltransfer.agents.dropout import MaskedDropout

_MODE_DEPENDENT = (_DropoutNd, MaskedDropout, _NormBase)  # dropout; batch/instance norm's running statistics


def _is_frozen(module: nn.Module) -> bool:
    return not any(param.requires_grad for param in module.parameters())


def _is_pure(module: nn.Module) -> bool:
    """True when the module computes the same function in train and eval mode and keeps no running state."""
    return not any(isinstance(sub, _MODE_DEPENDENT) for sub in module.modules())


def _frozen_prefix(network: nn.Module) -> int:
    """How many leading modules of a Sequential network are frozen and pure."""
    if not isinstance(network, nn.Sequential):
        return 0
    count = 0
    for module in network:
        if not (_is_frozen(module) and _is_pure(module)):
            break
        count += 1
    return count


@dataclass
class FrozenTrunk:
    """The frozen front of an actor-critic policy: its feature extractor(s) and the first `actor_skip` /
    `critic_skip` modules of the actor and critic networks."""

    policy: ActorCriticPolicy
    actor_skip: int
    critic_skip: int
    actor_dim: int = 0
    shared: bool = False  # actor and critic read the same cached tensor

    def features(self, observations: np.ndarray, batch_size: int) -> np.ndarray:
        """The frozen part's outputs for flat observations, (N, actor_dim [+ critic_dim]) float32."""
        policy = self.policy
        actor_front = policy.mlp_extractor.policy_net[: self.actor_skip]
        critic_front = policy.mlp_extractor.value_net[: self.critic_skip]
        chunks = []
        with torch.no_grad():
            for start in range(0, len(observations), batch_size):
                obs = torch.as_tensor(observations[start : start + batch_size], device=policy.device)
                features = policy.extract_features(obs)
                pi_in, vf_in = features if isinstance(features, tuple) else (features, features)
                actor = actor_front(pi_in)
                if self.shared:
                    chunks.append(actor.float().cpu().numpy())
                    continue
                critic = critic_front(vf_in)
                chunks.append(torch.cat([actor, critic], dim=1).float().cpu().numpy())
                self.actor_dim = actor.shape[1]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def evaluate_actions(
        self, cached: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """SB3's ``ActorCriticPolicy.evaluate_actions`` from the cached outputs onward."""
        policy = self.policy
        pi_in, vf_in = (
            (cached, cached) if self.shared else (cached[:, : self.actor_dim], cached[:, self.actor_dim :])
        )
        actor_rest = policy.mlp_extractor.policy_net[self.actor_skip :]
        critic_rest = policy.mlp_extractor.value_net[self.critic_skip :]
        distribution = policy._get_action_dist_from_latent(actor_rest(pi_in))
        log_prob = distribution.log_prob(actions)
        values = policy.value_net(critic_rest(vf_in))
        return values, log_prob, distribution.entropy()

    @contextlib.contextmanager
    def in_update(self, buffer: CachingRolloutBuffer, batch_size: int) -> Iterator[None]:
        """For one update: the buffer hands out cached outputs as observations, the policy evaluates from them."""
        if buffer.generator_ready:
            raise RuntimeError("the rollout buffer was read before the update")
        buffer.trunk_features = self.features(buffer.swap_and_flatten(buffer.observations), batch_size)
        self.policy.evaluate_actions = self.evaluate_actions  # type: ignore[method-assign]
        try:
            yield
        finally:
            del self.policy.evaluate_actions
            buffer.trunk_features = None


def frozen_trunk(policy: nn.Module) -> FrozenTrunk | None:
    """The policy's frozen front when its outputs can be computed once per rollout, else None."""
    if not isinstance(policy, ActorCriticPolicy) or type(policy.mlp_extractor) is not MlpExtractor:
        return None
    if type(policy).evaluate_actions is not ActorCriticPolicy.evaluate_actions:
        return None  # a policy with its own evaluation: its trunk cannot be assumed to be the front
    if "evaluate_actions" in vars(policy):
        return None  # already in an update that reuses it
    extractors = (
        [policy.features_extractor]
        if policy.share_features_extractor
        else [policy.pi_features_extractor, policy.vf_features_extractor]
    )
    if not all(_is_frozen(extractor) and _is_pure(extractor) for extractor in extractors):
        return None
    actor_skip = _frozen_prefix(policy.mlp_extractor.policy_net)
    critic_skip = _frozen_prefix(policy.mlp_extractor.value_net)
    cached = [*extractors, *policy.mlp_extractor.policy_net[:actor_skip]]
    cached += list(policy.mlp_extractor.value_net[:critic_skip])
    if not any(True for module in cached for _ in module.parameters()):
        return None  # nothing with weights to skip (a flatten extractor and no frozen layer)
    shared = policy.share_features_extractor and actor_skip == 0 and critic_skip == 0
    return FrozenTrunk(policy, actor_skip, critic_skip, shared=shared)


class CachingRolloutBuffer(RolloutBuffer):
    """RolloutBuffer whose minibatches can carry a frozen trunk's cached outputs in place of the observations,
    and that tells a :class:`~rltransfer.agents.dropout.MaskBank` (and kickstarting) which samples they hold."""

    trunk_features: np.ndarray | None = None
    mask_bank = None
    current_indices: np.ndarray | None = None
    """The flat sample indices of the minibatch handed out last (kickstarting reads the source's outputs there)."""

    def _get_samples(self, batch_inds: np.ndarray, env=None):  # type: ignore[override]
        self.current_indices = batch_inds
        if self.mask_bank is not None:
            self.mask_bank.use(batch_inds)
        if self.trunk_features is None:
            return super()._get_samples(batch_inds, env)
        observations, self.observations = self.observations, self.trunk_features
        try:
            return super()._get_samples(batch_inds, env)
        finally:
            self.observations = observations
