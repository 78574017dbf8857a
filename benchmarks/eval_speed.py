"""Evaluation episodes one after another against side by side: the same returns, and the time each takes.

    python benchmarks/eval_speed.py [--env CartPole-v1] [--steps 8192] [--episodes 10] [--evaluations 3]

Trains a PPO agent briefly (so its episodes last), then plays the same evaluations both ways and prints, for
each, whether the returns and lengths are identical and the seconds each way took (one torch thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from stable_baselines3 import PPO

from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import EVAL_SEED_OFFSET, evaluation_env_maker, make_envs
from rltransfer.rl.episodes import EvaluationEpisodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--evaluations", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = EnvConfig(id=args.env, n_envs=1)
    seed = 3
    train_env, one_env = make_envs(env, seed)
    model = PPO("MlpPolicy", train_env, seed=0, device="cpu")
    model.learn(args.steps)
    one_by_one = EvaluationEpisodes(one_env, episodes=args.episodes, deterministic=True)
    together = EvaluationEpisodes(
        make_envs(env, seed)[1],
        episodes=args.episodes,
        deterministic=True,
        side_by_side=args.episodes,
        make_env=evaluation_env_maker(env),
        seed=seed + EVAL_SEED_OFFSET,
    )
    ratios = []
    print("evaluation | mean return | identical | one after another, s | side by side, s | speed-up")
    for index in range(args.evaluations):
        started = time.perf_counter()
        first = one_by_one.play(model)
        middle = time.perf_counter()
        second = together.play(model)
        ended = time.perf_counter()
        ratios.append((middle - started) / (ended - middle))
        print(
            f"{index} | {np.mean(first[0]):.1f} | {first == second} | {middle - started:.3f} | "
            f"{ended - middle:.3f} | {ratios[-1]:.1f}x"
        )
    print(f"median speed-up: {np.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
