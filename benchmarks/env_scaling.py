"""Environment steps per second against the number of parallel envs, in one process (DummyVecEnv) and one process
per env (SubprocVecEnv): which `env.vec` pays for which game.

    python benchmarks/env_scaling.py [--steps 4000] [--n-envs 1 2 4 8]

Random actions, no learning: this is the environments' own cost and the cost of running them in parallel
(passing observations between processes for subproc). Games whose package is missing are skipped with a note.
Writes the table to ``runs/benchmarks/env_scaling.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rltransfer.core.io import write_json
from rltransfer.rl.config import EnvConfig
from rltransfer.rl.environment import make_envs

GAMES = {
    "CartPole": ("rltransfer/CartPole-v1", None),
    "MinAtar Breakout": ("rltransfer/MinAtarBreakout-v1", "minatar"),
    "Atari Pong": ("rltransfer/AtariPong-v1", "ale_py"),
}


def steps_per_second(env_id: str, n_envs: int, vec: str, steps: int) -> float:
    train_env, eval_env = make_envs(EnvConfig(id=env_id, n_envs=n_envs, vec=vec), seed=0)
    eval_env.close()
    train_env.reset()
    actions = lambda: np.array([train_env.action_space.sample() for _ in range(n_envs)])  # noqa: E731
    for _ in range(10):  # warm-up: worker processes started, first frames rendered
        train_env.step(actions())
    calls = max(1, steps // n_envs)
    started = time.perf_counter()
    for _ in range(calls):
        train_env.step(actions())
    seconds = time.perf_counter() - started
    train_env.close()
    return calls * n_envs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-envs", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/env_scaling.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'game':<18} {'n_envs':>6} {'dummy steps/s':>14} {'subproc steps/s':>16}")
    for game, (env_id, package) in GAMES.items():
        if package is not None:
            try:
                __import__(package)
            except ImportError:
                print(f"{game}: skipped, {package} is not installed")
                continue
        for n_envs in args.n_envs:
            dummy = steps_per_second(env_id, n_envs, "dummy", args.steps)
            subproc = steps_per_second(env_id, n_envs, "subproc", args.steps)
            rows.append({"game": game, "n_envs": n_envs, "dummy": round(dummy), "subproc": round(subproc)})
            print(f"{game:<18} {n_envs:>6} {dummy:>14,.0f} {subproc:>16,.0f}", flush=True)
    write_json(args.out, {"rows": rows})
    print(f"Written to {args.out}")


if __name__ == "__main__":
    main()
