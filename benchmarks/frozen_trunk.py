"""Update-phase time of PPO with a frozen CNN trunk: its outputs computed once per rollout, or in every minibatch.

    python benchmarks/frozen_trunk.py [--pairs 3] [--only NAME ...] [--device auto] [--threads N]

For MinAtar's small CNN (the agent of ``configs/minatar/source.yaml``) and Atari's Nature-CNN (the agent of
``configs/atari/source.yaml``; needs ale-py), the agent collects one rollout with its feature extractor frozen;
then the same update (``model.train()``: every epoch and minibatch) runs from the same state on a copy of that
rollout, alternately with the trunk computed once (``cache_frozen_trunk``, the default) and in every minibatch
as before, `--pairs` times each. Also timed: the frozen trunk's forward pass over the rollout alone (what the
cached update spends on it once), and once the update with nothing frozen. Prints the median times, the
speed-up, the most any reuse of the trunk could give (the update with the trunk's cost taken out entirely), and
the largest difference between the two updates' weights; writes them to ``--out``
(default ``runs/benchmarks/frozen_trunk.json``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rltransfer.agents import build_agent
from rltransfer.agents.freezing import freeze_agent
from rltransfer.agents.trunk_cache import frozen_trunk
from rltransfer.core.config import load_config, resolve_config_path
from rltransfer.core.device import resolve_device
from rltransfer.core.io import write_json
from rltransfer.rl.config import EnvConfig, TrainConfig
from rltransfer.rl.environment import make_envs

CASES = {
    # name: (env id, the shipped config whose agent is used, n_envs)
    "minatar-small-cnn": ("rltransfer/MinAtarBreakout-v1", "minatar/source", 8),
    "atari-nature-cnn": ("rltransfer/AtariPong-v1", "atari/source", 8),
}


def _collect_rollout(model) -> None:
    """One rollout into the model's buffer, without an update."""
    model.train = lambda: None
    try:
        model.learn(model.n_steps * model.n_envs)
    finally:
        del model.train


def _timed_update(model, rollout, policy_state, optimizer_state, cache: bool) -> tuple[float, dict]:
    model.rollout_buffer = copy.deepcopy(rollout)
    model.policy.load_state_dict(policy_state)
    model.policy.optimizer.load_state_dict(optimizer_state)
    model.cache_frozen_trunk = cache
    np.random.seed(0)  # the minibatch order
    started = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - started
    return seconds, {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def measure(name: str, pairs: int, device: str) -> dict:
    env_id, config_name, n_envs = CASES[name]
    agent = load_config(resolve_config_path(config_name), TrainConfig).agent
    train_env, eval_env = make_envs(EnvConfig(id=env_id, n_envs=n_envs), seed=0)
    eval_env.close()
    model = build_agent(agent, train_env, seed=0, device=device)
    frozen = freeze_agent(model, ["features_extractor"])
    _collect_rollout(model)
    rollout = copy.deepcopy(model.rollout_buffer)
    policy_state = copy.deepcopy(model.policy.state_dict())
    optimizer_state = copy.deepcopy(model.policy.optimizer.state_dict())
    times: dict[bool, list[float]] = {True: [], False: []}
    weights: dict[bool, dict] = {}
    for pair in range(pairs):
        for cache in (True, False) if pair % 2 == 0 else (False, True):
            seconds, weights[cache] = _timed_update(model, rollout, policy_state, optimizer_state, cache)
            times[cache].append(seconds)
    trunk = frozen_trunk(model.policy)
    assert trunk is not None, "the frozen feature extractor should be cached"
    observations = rollout.swap_and_flatten(rollout.observations)
    forward = []
    for _ in range(pairs):
        started = time.perf_counter()
        trunk.features(observations, model.batch_size)
        forward.append(time.perf_counter() - started)
    difference = max((weights[True][key] - weights[False][key]).abs().max().item() for key in weights[True])

    full = build_agent(agent, train_env, seed=0, device=device)  # nothing frozen, same rollout
    full.learn(1)  # sets up the logger and buffer
    full_seconds, _ = _timed_update(
        full,
        rollout,
        copy.deepcopy(full.policy.state_dict()),
        copy.deepcopy(full.policy.optimizer.state_dict()),
        True,
    )
    train_env.close()
    once, every = statistics.median(times[True]), statistics.median(times[False])
    rest = once - statistics.median(forward)  # the update without any trunk work: what caching cannot remove
    return {
        "case": name,
        "env": env_id,
        "device": device,
        "frozen": frozen,
        "samples": model.n_steps * model.n_envs,
        "epochs": model.n_epochs,
        "batch_size": model.batch_size,
        "seconds_trunk_once": [round(t, 3) for t in times[True]],
        "seconds_trunk_every_minibatch": [round(t, 3) for t in times[False]],
        "seconds_trunk_forward_once": [round(t, 4) for t in forward],
        "seconds_nothing_frozen": round(full_seconds, 3),
        "speedup": round(every / once, 2),
        "speedup_bound": round(every / rest, 2),
        "speedup_over_nothing_frozen": round(full_seconds / once, 2),
        "max_weight_difference": difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/frozen_trunk.json"))
    args = parser.parse_args(argv)
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
        result = measure(name, args.pairs, device)
        results.append(result)
        once = statistics.median(result["seconds_trunk_once"])
        every = statistics.median(result["seconds_trunk_every_minibatch"])
        print(
            f"{name:18s} update of {result['samples']:,} samples x {result['epochs']} epochs: "
            f"trunk once {once:.3f} s, every minibatch {every:.3f} s -> {result['speedup']:.2f}x "
            f"(at most {result['speedup_bound']:.2f}x if the trunk cost nothing); "
            f"nothing frozen {result['seconds_nothing_frozen']:.3f} s; "
            f"weights differ by at most {result['max_weight_difference']:.1e}",
            flush=True,
        )
    write_json(args.out, {"threads": torch.get_num_threads(), "device": device, "results": results})
    print(f"Written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
