"""What a checkpoint costs a DQN agent with an Atari-sized replay buffer: with the buffer and without it.

    python benchmarks/checkpoint_cost.py [--buffer 10000] [--repeats 3]

The agent is SB3's DQN with the Nature-CNN on 4 x 84 x 84 uint8 frames (Atari's shape after the usual
wrappers), its buffer filled with random frames. Timed: ``save_agent_checkpoint`` with the buffer (what every
evaluation used to write) and without it (what an evaluation writes now, the buffer going only every
``checkpoint.buffer_seconds``), median of `--repeats`; the buffer part is then scaled linearly to the buffer
sizes Atari agents use (100,000 in rl-baselines3-zoo, 1,000,000 by SB3's default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN

from rltransfer.rl.checkpoints import save_agent_checkpoint


class Frames(gym.Env):
    """Atari-shaped observations and six actions; nothing else is needed to build and save the agent."""

    observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        return self.observation_space.sample(), 0.0, False, False, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffer", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = DQN("CnnPolicy", Frames(), buffer_size=args.buffer, learning_starts=0, device="cpu", verbose=0)
    buffer = model.replay_buffer
    rng = np.random.default_rng(0)
    buffer.observations[...] = rng.integers(0, 256, buffer.observations.shape, dtype=np.uint8)
    if buffer.next_observations is not None:
        buffer.next_observations[...] = rng.integers(0, 256, buffer.next_observations.shape, dtype=np.uint8)
    buffer.pos, buffer.full = 0, True
    gigabytes = sum(a.nbytes for a in (buffer.observations, buffer.next_observations) if a is not None) / 1e9
    timings = {}
    with tempfile.TemporaryDirectory(prefix="rltransfer-checkpoint-") as root:
        save_agent_checkpoint(model, Path(root), {}, with_buffer=True)  # the first one always has the buffer
        for with_buffer in (True, False):
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                save_agent_checkpoint(model, Path(root), {}, with_buffer=with_buffer)
                seconds.append(time.perf_counter() - started)
            timings[with_buffer] = statistics.median(seconds)
    per_gb = (timings[True] - timings[False]) / gigabytes
    print(f"buffer of {args.buffer:,} frames ({gigabytes:.2f} GB of observations)")
    print(f"checkpoint with the buffer:    {timings[True]:.2f} s")
    print(f"checkpoint without the buffer: {timings[False]:.3f} s (the weights and optimizer state)")
    for size in (100_000, 1_000_000):
        scale = size / args.buffer
        print(
            f"at {size:,} frames ({gigabytes * scale:.0f} GB): with the buffer about "
            f"{timings[False] + per_gb * gigabytes * scale:.0f} s per checkpoint, without it {timings[False]:.3f} s"
        )


if __name__ == "__main__":
    main()
