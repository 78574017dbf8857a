"""Environment steps per second of rltransfer's CNN policies while learning (rollouts and updates together).

    python benchmarks/cnn_speed.py [--steps 20000] [--device auto] [--threads N] [--only NAME ...]

Each case builds the agent the shipped configs use (PPO and DQN with the small CNN on MinAtar; PPO with SB3's
Nature-CNN on Atari, when ale-py is installed), learns for a warm-up, then times ``learn`` for `--steps` more
environment steps. Prints a table and writes it to ``--out`` (default ``runs/benchmarks/cnn_speed.json``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rltransfer.agents import build_agent
from rltransfer.agents.config import AgentConfig
from rltransfer.core.config import load_config, resolve_config_path
from rltransfer.core.device import resolve_device
from rltransfer.core.io import write_json
from rltransfer.rl.config import EnvConfig, TrainConfig
from rltransfer.rl.environment import make_envs

CASES = {
    # name: (env id, agent: a shipped config's agent or an explicit one, n_envs)
    "minatar-ppo-small-cnn": ("rltransfer/MinAtarBreakout-v1", "minatar/source", 8),
    "minatar-dqn-small-cnn": (
        "rltransfer/MinAtarBreakout-v1",
        {
            "algo": "dqn",
            "hyperparams": {
                "learning_starts": 1000,
                "train_freq": 4,
                "batch_size": 32,
                "buffer_size": 100000,
            },
            "policy": {"features": "small_cnn", "hidden": [64]},
        },
        1,
    ),
    "atari-ppo-nature-cnn": ("rltransfer/AtariPong-v1", "atari/source", 8),
}


def agent_of(spec: str | dict) -> AgentConfig:
    if isinstance(spec, dict):
        return AgentConfig.model_validate(spec)
    config = load_config(resolve_config_path(spec), TrainConfig)
    return config.agent


def measure(name: str, steps: int, device: str, warmup: int | None = None) -> dict:
    """Env-steps/s of `learn` for `steps` steps after `warmup` (default: 2,000 steps or one rollout)."""
    env_id, spec, n_envs = CASES[name]
    train_env, eval_env = make_envs(EnvConfig(id=env_id, n_envs=n_envs), seed=0)
    eval_env.close()
    model = build_agent(agent_of(spec), train_env, seed=0, device=device)
    if warmup is None:
        warmup = max(2000, getattr(model, "n_steps", 0) * n_envs)
    model.learn(warmup)
    started, before = time.perf_counter(), model.num_timesteps
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - started
    done = model.num_timesteps - before
    train_env.close()
    return {
        "case": name,
        "env": env_id,
        "device": device,
        "steps": done,
        "seconds": round(seconds, 2),
        "steps_per_second": round(done / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/cnn_speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    results = []
    for name in args.only or CASES:
        if name.startswith("atari"):
            try:
                import ale_py  # noqa: F401
            except ImportError:
                print(f"{name}: skipped, ale-py is not installed (pip install 'rltransfer[atari]')")
                continue
        result = measure(name, args.steps, device)
        results.append(result)
        print(
            f"{name:24s} {result['env']:32s} {device:5s} {result['steps_per_second']:8.1f} steps/s "
            f"({result['steps']:,} steps in {result['seconds']:.1f} s)",
            flush=True,
        )
    write_json(args.out, {"threads": torch.get_num_threads(), "device": device, "results": results})
    print(f"Written to {args.out}")


if __name__ == "__main__":
    main()
