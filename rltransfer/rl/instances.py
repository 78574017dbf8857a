"""Instance transfer for off-policy agents: the source's own transitions replayed beside the target's.

Before fine-tuning, the source policy plays its own game (or a game given) for ``steps`` environment steps; those
transitions go into a replay buffer of their own. Every replayed batch of the target's DQN, SAC or TD3 then draws
a share of its samples from them, ``share`` at the start and decaying linearly to 0 over ``decay_steps`` (the
rest from the target's own buffer), so the source's experience weighs less and less as the target's own arrives.
Until the target's buffer holds anything, batches come from the source's transitions alone. The collection is
seeded, so a resumed run collects the same transitions again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from rltransfer.core.errors import ConfigError
from rltransfer.rl.config import EnvConfig


class MixingReplayBuffer(ReplayBuffer):
    """SB3's ReplayBuffer whose batches mix in a share of samples from a second buffer (the source's)."""

    source: ReplayBuffer | None = None
    share: Callable[[], float] = staticmethod(lambda: 0.0)  # type: ignore[assignment]
    drawn_from_source: int = 0

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        own = self.buffer_size if self.full else self.pos
        source = self.source
        if source is None or (source.pos == 0 and not source.full):
            return super().sample(batch_size, env=env)
        from_source = batch_size if own == 0 else int(np.random.binomial(batch_size, self.share()))
        self.drawn_from_source += from_source
        if from_source == 0:
            return super().sample(batch_size, env=env)
        theirs = source.sample(from_source, env=env)
        if from_source == batch_size:
            return theirs
        ours = super().sample(batch_size - from_source, env=env)
        return ReplayBufferSamples(
            *(None if a is None else torch.cat([a, b]) for a, b in zip(ours, theirs, strict=True))
        )  # (fields SB3 leaves None, such as n-step discounts, stay None)


EXPLORATION = 0.05
"""Share of random actions while the source plays (DQN's greedy policy would otherwise repeat itself)."""


def collect_source_transitions(
    model: BaseAlgorithm, source_policy: Any, env: EnvConfig, steps: int, seed: int
) -> ReplayBuffer:
    """`steps` transitions of the source policy (its stochastic actions, and 5% random ones) on `env`, in a
    buffer shaped like the target model's (the spaces must match)."""
    from rltransfer.rl.environment import make_envs

    train_env, eval_env = make_envs(env.model_copy(update={"n_envs": 1}), seed)
    eval_env.close()
    try:
        if (
            train_env.observation_space != model.observation_space
            or train_env.action_space != model.action_space
        ):
            raise ConfigError(
                f"`agent.source_transitions`: the source's game {env.id} has observations {train_env.observation_space} "
                f"and actions {train_env.action_space}, the target's {model.observation_space} and "
                f"{model.action_space}; its transitions cannot be replayed by the target. Give "
                "`agent.source_transitions.env` a game with the target's spaces (e.g. the target itself)."
            )
        buffer = ReplayBuffer(
            steps, model.observation_space, model.action_space, device=model.device, n_envs=1,
            handle_timeout_termination=True,
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        train_env.action_space.seed(seed)
        observation = train_env.reset()
        for _ in range(steps):
            action, _ = source_policy.predict(observation, deterministic=False)
            if rng.random() < EXPLORATION:
                action = np.array([train_env.action_space.sample()])
            next_observation, reward, done, infos = train_env.step(action)
            real_next = next_observation.copy()
            if done[0] and infos[0].get("terminal_observation") is not None:
                real_next[0] = infos[0]["terminal_observation"]
            # SAC/TD3 keep actions scaled to [-1, 1] in their buffers, as SB3 stores them
            stored = (
                source_policy.scale_action(action)
                if getattr(source_policy, "squash_output", False)
                else action
            )
            buffer.add(observation, real_next, stored, reward, done, infos)
            observation = next_observation
    finally:
        train_env.close()
    return buffer


def attach_source_transitions(
    model: BaseAlgorithm,
    settings: Any,
    source_state: dict[str, torch.Tensor],
    source_env: EnvConfig,
    seed: int,
    budget: int,
) -> MixingReplayBuffer:
    """Give `model` a replay buffer that mixes in the source's transitions (collected now) with a decaying share."""
    from rltransfer.agents.kickstart import source_policy

    if not hasattr(model, "replay_buffer"):
        raise ConfigError(
            "`agent.source_transitions` replays the source's transitions, which needs an off-policy agent with a "
            "replay buffer (DQN, SAC, TD3). Remove it for PPO and A2C."
        )
    player = source_policy(model, source_state, "the source", "agent.source_transitions")
    transitions = collect_source_transitions(model, player, source_env, settings.steps, seed)
    old = model.replay_buffer
    mixing = MixingReplayBuffer(
        old.buffer_size, model.observation_space, model.action_space, device=model.device, n_envs=old.n_envs,
        optimize_memory_usage=old.optimize_memory_usage, handle_timeout_termination=old.handle_timeout_termination,
    )  # fmt: skip
    decay = settings.decay_steps or budget
    mixing.source = transitions
    mixing.share = lambda: settings.share * max(0.0, 1.0 - model.num_timesteps / decay)
    model.replay_buffer = mixing
    return mixing
