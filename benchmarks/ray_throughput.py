"""Runs per minute of one tiny study on the local process pool and on Ray on this machine, and whether the two
backends give the same curves.

    python benchmarks/ray_throughput.py [--seeds 4] [--budget 2048]

Both backends get the same source (trained once, outside the timing), the same runs and the same number of
parallel runs: one per CPU core (the pool's processes; Ray started by the study on this machine, one CPU per
run). Timed: the whole `run_study` call (Ray's or the pool's start-up, the runs, the report), and the runs' own
training time from their records; the difference is the overhead the backend adds (worker start-up, the source
and each run directory travelling through the object store, Ray's scheduling).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rltransfer import train
from rltransfer.study import run_study

SOURCE = {
    "name": "source",
    "budget": 4096,
    "device": "cpu",
    "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
    "eval": {"every": 1024, "episodes": 5, "patience": None},
}


def _study(root: Path, name: str, source: str, seeds: int, budget: int, execution: dict) -> dict:
    return {
        "name": name,
        "log_root": str(root),
        "device": "cpu",
        "source": {"path": source},
        "targets": [{"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}],
        "strategies": ["scratch", "finetune"],
        "seeds": seeds,
        "budget": budget,
        "eval": {"every": budget // 4, "episodes": 5},
        "execution": execution,
    }


def _measure(study: dict) -> dict:
    started = time.perf_counter()
    report = run_study(study, progress=False)
    wall = time.perf_counter() - started
    results = sorted((report.study_dir / "runs").rglob("result.json"))
    records = [json.loads(path.read_text()) for path in results]
    curves = {
        str(path.parent.relative_to(report.study_dir)): r["curve"]
        for path, r in zip(results, records, strict=True)
    }
    train_seconds = [r["seconds"] for r in records]
    return {"wall": wall, "runs": len(records), "train": train_seconds, "curves": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=2048)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="rltransfer-throughput-"))
    source = str(train({**SOURCE, "log_root": str(root)}, progress_bar=False).run_dir)
    local = _measure(
        _study(root, "local", source, args.seeds, args.budget, {"backend": "local", "workers": workers})
    )
    on_ray = _measure(_study(root, "ray", source, args.seeds, args.budget, {"backend": "ray"}))
    print(f"{local['runs']} runs of {args.budget} steps, {workers} at a time; source outside the timing")
    print(f"{'backend':<8} {'wall s':>7} {'runs/min':>9} {'train s/run (median)':>21} {'wall s/run':>11}")
    for name, measured in (("local", local), ("ray", on_ray)):
        print(
            f"{name:<8} {measured['wall']:>7.1f} {60 * measured['runs'] / measured['wall']:>9.1f} "
            f"{statistics.median(measured['train']):>21.2f} {measured['wall'] / measured['runs']:>11.2f}"
        )
    extra = on_ray["wall"] - local["wall"]
    per_run = extra / local["runs"] * workers  # each of the `workers` slots spends this much more per run
    print(f"Ray's extra wall time: {extra:+.1f} s in all, {per_run:+.2f} s per run per slot")
    print("same curves on both backends:", local["curves"] == on_ray["curves"])


if __name__ == "__main__":
    main()
