"""What rltransfer's training costs over a plain Stable-Baselines3 script doing the same thing.

    python benchmarks/overhead.py [--algos ppo,a2c,dqn,sac] [--pairs 5] [--repeats 1] [--scale 1.0] [--eval-envs 1]

For each algorithm, a plain SB3 script and ``rltransfer.train`` run the same algorithm, network,
hyperparameters, seeds, evaluation schedule (SB3's ``EvalCallback``: same frequency and episodes, best model
saved, plus one evaluation before learning, as rltransfer's curve starts at step 0) and logging (TensorBoard and
CSV), one torch thread, side by side: each pair runs both, in alternating order, and the ratio is rltransfer's
time over the plain script's, CPU time of this process (which a busy machine's other load inflates far less
than wall time) and wall time. Both learn the same weights and play the same evaluation episodes; what
rltransfer adds is its machinery: the run record, a resumable checkpoint after every evaluation, Ctrl-C
handling, the NaN check, parameter counts in TensorBoard. rltransfer plays its evaluation episodes one after
another as ``EvalCallback`` does (``eval.envs: 1``), so that only that machinery differs; ``--eval-envs auto``
gives it its default instead (episodes side by side where the game allows, same returns), to see what a user
switching from the plain script gains. With ``--repeats R`` each pair runs each side R times (alternating, same
seed) and keeps each side's fastest run: on a shared machine other load only ever adds time, and identical runs
were seen to differ by up to 30%, so the fastest of a few is the better estimate of the work itself. Printed:
the median ratio over the pairs (and the range) per algorithm; the table lands in
``runs/benchmarks/overhead.json``.
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
        "budget": 2_048,
        "every": 512,
        "hyperparams": {"learning_starts": 256, "buffer_size": 50_000},
    },
}
EPISODES = 5
EVAL_SEED_OFFSET = 10_000  # as rltransfer's evaluation env


def plain_sb3(algo: str, case: dict[str, Any], seed: int, folder: Path) -> tuple[float, float]:
    """The script a user would write with SB3 alone; its (CPU, wall) seconds."""
    from stable_baselines3 import A2C, DQN, PPO, SAC
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import configure

    started, cpu = time.perf_counter(), time.process_time()
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
    # rltransfer evaluates at step 0 too (the curve's first point): the same episodes here, so that both sides
    # then see the same evaluation episodes and only the machinery around SB3 differs
    evaluate_policy(model, eval_env, n_eval_episodes=EPISODES, deterministic=True)
    model.learn(case["budget"], callback=evaluation)
    model.save(folder / "final_model")
    env.close()
    eval_env.close()
    return time.process_time() - cpu, time.perf_counter() - started


def with_rltransfer(algo: str, case: dict[str, Any], seed: int, folder: Path) -> tuple[float, float]:
    """``rltransfer.train`` with the same settings; its (CPU, wall) seconds."""
    from rltransfer import train

    config = {
        "name": "run",
        "log_root": str(folder),
        "seed": seed,
        "device": "cpu",
        "budget": case["budget"],
        "env": {"id": case["env"], "n_envs": case["n_envs"]},
        "eval": {
            "every": case["every"],
            "episodes": EPISODES,
            "patience": None,
            "threshold": None,
            "envs": case.get("eval_envs", 1),
        },
        "agent": {"algo": algo, "hyperparams": case["hyperparams"]},
    }
    started, cpu = time.perf_counter(), time.process_time()
    train(config, progress_bar=False)
    return time.process_time() - cpu, time.perf_counter() - started


def attribute(algo: str, case: dict[str, Any], folder: Path) -> dict[str, float]:
    """One rltransfer run under cProfile: seconds in each part of rltransfer's machinery (its callbacks' hooks,
    checkpoints, the setup before and the records after SB3's ``learn``), against the run's total. A profiler
    slows Python code more than torch's, so these shares are upper bounds."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    with_rltransfer(algo, case, 0, folder)
    profiler.disable()
    stats = pstats.Stats(
        profiler
    ).stats  # (file, line, function) -> (calls, calls, tottime, cumtime, callers)

    def cumulative(function: Any) -> float:
        """Cumulative seconds in one function (found by its file and first line, so that one class's
        ``_on_step`` is not confused with another's)."""
        code = function.__code__
        return sum(
            v[3]
            for (file, line, name), v in stats.items()
            if file == code.co_filename and line == code.co_firstlineno and name == code.co_name
        )

    from stable_baselines3.common.callbacks import EvalCallback

    from rltransfer.core import interrupt
    from rltransfer.rl import callbacks, training

    parts = {
        "train (total)": cumulative(training.train),
        "learn (SB3, with evaluation)": cumulative(training._learn),
        "checkpoints": cumulative(callbacks.Checkpointing.save),
        "NaN check": cumulative(callbacks.nonfinite_parameter),
        "parameter counts": cumulative(callbacks.RunInfo._record_parameters),
        "signal checks": cumulative(interrupt.stop_requested),
        "hooks in the loop (the above, and more)": cumulative(callbacks.Checkpointing._on_step)
        + cumulative(callbacks.Checkpointing._on_rollout_start)
        + cumulative(callbacks.RunInfo._on_step)
        + cumulative(callbacks.RunInfo._on_rollout_end),
        "curve and best-model records": cumulative(callbacks.EvaluateAndKeepBest._evaluate_now)
        - cumulative(EvalCallback._on_step),
    }
    parts["setup and records outside learn"] = parts["train (total)"] - parts["learn (SB3, with evaluation)"]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="ppo,a2c,dqn,sac")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each side per pair; the fastest counts"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every budget and eval interval")
    parser.add_argument(
        "--eval-envs",
        default="1",
        help="rltransfer's eval.envs: 1 (as the plain script's EvalCallback, the default) or auto (its default)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="instead: where rltransfer's own time goes, under cProfile"
    )
    args = parser.parse_args()
    eval_envs = args.eval_envs if args.eval_envs == "auto" else int(args.eval_envs)
    torch.set_num_threads(1)
    import stable_baselines3  # noqa: F401

    import rltransfer  # noqa: F401  (imports and env registration outside the timing, for both sides)

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch loads its compiler on the first optimizer

    root = Path(tempfile.mkdtemp(prefix="rltransfer-overhead-"))
    if args.profile:
        for algo in args.algos.split(","):
            case = dict(CASES[algo], budget=int(CASES[algo]["budget"] * args.scale), eval_envs=eval_envs)
            case["every"] = int(CASES[algo]["every"] * args.scale)
            parts = attribute(algo, case, root / algo)
            total = parts.pop("train (total)")
            print(f"{algo}: {total:.2f} s under the profiler")
            for name, seconds in parts.items():
                print(f"  {name:<34} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")
        return
    table: dict[str, dict[str, Any]] = {}
    for algo in args.algos.split(","):
        case = dict(CASES[algo], eval_envs=eval_envs)
        case["budget"] = int(case["budget"] * args.scale)
        case["every"] = int(case["every"] * args.scale)
        ratios, wall_ratios, plain_cpu, ours_cpu = [], [], [], []
        for pair in range(args.pairs):
            times: dict[str, tuple[float, float]] = {}
            for repeat in range(args.repeats):
                order = ("plain", "ours") if (pair + repeat) % 2 == 0 else ("ours", "plain")
                for side in order:
                    folder = root / algo / f"{side}-{pair}-{repeat}"
                    folder.mkdir(parents=True)
                    run = plain_sb3 if side == "plain" else with_rltransfer
                    times[side] = min(times.get(side, (float("inf"), 0.0)), run(algo, case, pair, folder))
            ratios.append(times["ours"][0] / times["plain"][0])
            wall_ratios.append(times["ours"][1] / times["plain"][1])
            plain_cpu.append(times["plain"][0])
            ours_cpu.append(times["ours"][0])
            print(
                f"{algo} pair {pair}: CPU s plain {times['plain'][0]:.2f}, rltransfer {times['ours'][0]:.2f}; "
                f"wall s plain {times['plain'][1]:.2f}, rltransfer {times['ours'][1]:.2f}",
                flush=True,
            )
        table[algo] = {
            "env": case["env"],
            "steps": case["budget"],
            "eval_envs": eval_envs,
            "repeats": args.repeats,
            "plain_cpu_s": statistics.median(plain_cpu),
            "rltransfer_cpu_s": statistics.median(ours_cpu),
            "cpu_ratio_median": statistics.median(ratios),
            "cpu_ratio_range": [min(ratios), max(ratios)],
            "wall_ratio_median": statistics.median(wall_ratios),
        }
    print(
        f"\n{'algo':<5} {'env':<12} {'steps':>7} {'plain CPU s':>12} {'rltransfer CPU s':>17} {'overhead: CPU (range)':>26} {'wall':>7}"
    )
    for algo, row in table.items():
        low, high = row["cpu_ratio_range"]
        print(
            f"{algo:<5} {row['env']:<12} {row['steps']:>7} {row['plain_cpu_s']:>12.2f} {row['rltransfer_cpu_s']:>17.2f} "
            f"{100 * (row['cpu_ratio_median'] - 1):>+9.1f}% [{100 * (low - 1):+.1f}%, {100 * (high - 1):+.1f}%] "
            f"{100 * (row['wall_ratio_median'] - 1):>+6.1f}%"
        )
    out = Path("runs/benchmarks/overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
