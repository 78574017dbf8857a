"""What rltransfer's training costs over a plain Stable-Baselines3 script doing the same thing.

    python benchmarks/overhead.py [--algos ppo,a2c,dqn,sac] [--pairs 5] [--scale 1.0]

For each algorithm, a plain SB3 script and ``rltransfer.train`` run the same algorithm, network,
hyperparameters, seeds, evaluation schedule (SB3's ``EvalCallback``: same frequency and episodes, best model
saved) and logging (TensorBoard and CSV), one torch thread, side by side: each pair runs both, in alternating
order, and the ratio is rltransfer's wall time over the plain script's. rltransfer's run also does what the
plain script does not: the step-0 evaluation, the run record, a resumable checkpoint after every evaluation,
Ctrl-C handling and the NaN check. Printed: the median ratio over the pairs (and the range) per algorithm; the
table lands in ``runs/benchmarks/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CASES: dict[str, dict[str, Any]] = {
    "ppo": {
        "env": "CartPole-v1",
        "n_envs": 8,
        "budget": 40_960,
        "every": 8_192,
        "hyperparams": {"n_steps": 512},
    },
    "a2c": {"env": "CartPole-v1", "n_envs": 8, "budget": 40_960, "every": 8_192, "hyperparams": {}},
    "dqn": {
        "env": "CartPole-v1",
        "n_envs": 1,
        "budget": 40_960,
        "every": 8_192,
        "hyperparams": {"learning_starts": 1_000, "buffer_size": 50_000, "train_freq": 4},
    },
    "sac": {
        "env": "Pendulum-v1",
        "n_envs": 1,
        "budget": 4_096,
        "every": 1_024,
        "hyperparams": {"learning_starts": 256, "buffer_size": 50_000},
    },
}
EPISODES = 5
EVAL_SEED_OFFSET = 10_000  # as rltransfer's evaluation env


def plain_sb3(algo: str, case: dict[str, Any], seed: int, folder: Path) -> float:
    """The script a user would write with SB3 alone; its wall time."""
    from stable_baselines3 import A2C, DQN, PPO, SAC
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    started = time.perf_counter()
    env = make_vec_env(case["env"], n_envs=case["n_envs"], seed=seed)
    eval_env = make_vec_env(case["env"], n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC}[algo]
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **case["hyperparams"])
    model.set_logger(configure(str(folder), ["tensorboard", "csv"]))
    evaluation = EvalCallback(
        eval_env,
        eval_freq=max(1, case["every"] // case["n_envs"]),
        n_eval_episodes=EPISODES,
        best_model_save_path=str(folder),
        deterministic=True,
        verbose=0,
        warn=False,
    )
    model.learn(case["budget"], callback=evaluation)
    model.save(folder / "final_model")
    env.close()
    eval_env.close()
    return time.perf_counter() - started


def with_rltransfer(algo: str, case: dict[str, Any], seed: int, folder: Path) -> float:
    """``rltransfer.train`` with the same settings; its wall time."""
    from rltransfer import train

    config = {
        "name": "run",
        "log_root": str(folder),
        "seed": seed,
        "device": "cpu",
        "budget": case["budget"],
        "env": {"id": case["env"], "n_envs": case["n_envs"]},
        "eval": {"every": case["every"], "episodes": EPISODES, "patience": None, "threshold": None},
        "agent": {"algo": algo, "hyperparams": case["hyperparams"]},
    }
    started = time.perf_counter()
    train(config, progress_bar=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="ppo,a2c,dqn,sac")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every budget and eval interval")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import rltransfer  # noqa: F401  (imports and env registration outside the timing, for both sides)
    import stable_baselines3  # noqa: F401

    root = Path(tempfile.mkdtemp(prefix="rltransfer-overhead-"))
    table: dict[str, dict[str, Any]] = {}
    for algo in args.algos.split(","):
        case = dict(CASES[algo])
        case["budget"] = int(case["budget"] * args.scale)
        case["every"] = int(case["every"] * args.scale)
        ratios, plain_times, ours_times = [], [], []
        for pair in range(args.pairs):
            order = ("plain", "ours") if pair % 2 == 0 else ("ours", "plain")
            times = {}
            for side in order:
                folder = root / algo / f"{side}-{pair}"
                folder.mkdir(parents=True)
                run = plain_sb3 if side == "plain" else with_rltransfer
                times[side] = run(algo, case, pair, folder)
            ratios.append(times["ours"] / times["plain"])
            plain_times.append(times["plain"])
            ours_times.append(times["ours"])
            print(f"{algo} pair {pair}: plain {times['plain']:.2f} s, rltransfer {times['ours']:.2f} s", flush=True)
        table[algo] = {
            "env": case["env"],
            "steps": case["budget"],
            "plain_s": statistics.median(plain_times),
            "rltransfer_s": statistics.median(ours_times),
            "ratio_median": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        }
    print(f"\n{'algo':<5} {'env':<12} {'steps':>7} {'plain s':>8} {'rltransfer s':>13} {'overhead (median, range)':>28}")
    for algo, row in table.items():
        low, high = row["ratio_range"]
        print(
            f"{algo:<5} {row['env']:<12} {row['steps']:>7} {row['plain_s']:>8.2f} {row['rltransfer_s']:>13.2f} "
            f"{100 * (row['ratio_median'] - 1):>+9.1f}% [{100 * (low - 1):+.1f}%, {100 * (high - 1):+.1f}%]"
        )
    out = Path("runs/benchmarks/overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
