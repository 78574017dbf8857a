"""The GPU path, measured and checked in one go: `device: auto` picks the GPU, PPO with the Nature-CNN and a
resnet18 fine-tuning epoch on CPU against GPU, and a study that puts several runs on one GPU.

    bash benchmarks/gpu.sh [--quick] [--out runs/benchmarks/gpu.json]

Without CUDA it says so, measures the CPU side only and checks that `auto` then means the CPU (that is the
path CI exercises, with --quick). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cnn_speed.py beside this file


def nature_cnn_ppo(device: str, steps: int, quick: bool) -> dict[str, Any]:
    """PPO env-steps/s with SB3's Nature-CNN on Atari Pong when ale-py is installed; else (and with --quick)
    with the small CNN on MinAtar, named in the result."""
    import cnn_speed

    case = "minatar-ppo-small-cnn"
    if not quick:
        try:
            import ale_py  # noqa: F401

            case = "atari-ppo-nature-cnn"
        except ImportError:
            print(
                "ale-py is not installed (pip install 'rltransfer[atari]'): PPO measured on MinAtar instead"
            )
    return cnn_speed.measure(case, steps, device, warmup=1 if quick else None)


def resnet18_epoch(device: str, images: int, size: int) -> dict[str, Any]:
    """Seconds for one fine-tuning epoch of resnet18 (every layer trained, a new 10-class head) over synthetic
    images: the speed does not depend on the pixels or on pretrained weights."""
    from torchvision.models import resnet18

    from rltransfer.core.heads import replace_head

    torch.manual_seed(0)
    model = resnet18(weights=None)
    replace_head(model, 10)  # fc: a fresh Linear(512, 10)
    model = model.to(device)
    data = torch.rand(images, 3, size, size)
    labels = torch.randint(0, 10, (images,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        for start in range(0, images, 32):
            x, y = data[start : start + 32].to(device), labels[start : start + 32].to(device)
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    epoch()  # warm-up: kernels chosen, memory allocated
    started = time.perf_counter()
    epoch()
    seconds = time.perf_counter() - started
    return {"device": device, "images": images, "size": size, "seconds": round(seconds, 3)}


def study_on_one_device(gpu: bool, root: Path, budget: int) -> dict[str, Any]:
    """A tiny study of 4 runs; with a GPU, on Ray with a quarter GPU each (all four at once on the one GPU) when
    the ray extra is installed, else the local pool. Returns the devices the runs recorded."""
    from rltransfer import run_study

    execution: dict[str, Any] = {"backend": "local"}
    if gpu:
        try:
            import ray  # noqa: F401

            execution = {"backend": "ray", "gpus_per_run": 0.25}
        except ImportError:
            pass
    source = root / "source.yaml"
    source.write_text(
        json.dumps(
            {
                "name": "source",
                "budget": budget,
                "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
                "eval": {"every": budget // 2, "episodes": 2, "patience": None},
            }
        )
    )  # JSON is YAML
    study = {
        "name": "gpu-study",
        "log_root": str(root),
        "device": "auto",
        "source": {"config": str(source)},
        "targets": [{"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}],
        "strategies": ["scratch", "finetune"],
        "seeds": 2,
        "budget": budget,
        "eval": {"every": budget // 2, "episodes": 2},
        "execution": execution,
    }
    report = run_study(study, progress=False)
    devices = sorted(
        json.loads(path.read_text())["device"] for path in (report.study_dir / "runs").rglob("run.json")
    )
    return {"execution": execution, "devices": devices, "failed": len(report.failed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the path, not the speed")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/gpu.json"))
    args = parser.parse_args(argv)
    from rltransfer.core.device import resolve_device
    from rltransfer.core.io import write_json

    torch.set_num_threads(1 if args.quick else torch.get_num_threads())
    gpu = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    checks: dict[str, bool] = {}
    auto = resolve_device("auto")
    checks["auto picks the GPU" if gpu else "auto picks the CPU (no CUDA here)"] = auto.startswith(
        "cuda" if gpu else "cpu"
    )
    print(f"CUDA: {torch.cuda.get_device_name(0) if gpu else 'not available; measuring the CPU only'}")
    steps, images, size, budget = (256, 16, 32, 256) if args.quick else (20_000, 512, 224, 4096)
    results: dict[str, Any] = {"auto": auto, "ppo": [], "resnet18": []}
    for device in devices:
        ppo = nature_cnn_ppo(device, steps, args.quick)
        results["ppo"].append(ppo)
        print(f"PPO {ppo['case']} on {device}: {ppo['steps_per_second']:.0f} env-steps/s", flush=True)
        epoch = resnet18_epoch(device, images, size)
        results["resnet18"].append(epoch)
        print(f"resnet18 epoch ({images} images, {size}px) on {device}: {epoch['seconds']:.2f} s", flush=True)
    if gpu:
        results["ppo_speedup"] = results["ppo"][1]["steps_per_second"] / results["ppo"][0]["steps_per_second"]
        results["resnet18_speedup"] = results["resnet18"][0]["seconds"] / results["resnet18"][1]["seconds"]
        print(
            f"GPU / CPU: PPO x{results['ppo_speedup']:.2f}, resnet18 epoch x{results['resnet18_speedup']:.2f}"
        )
    with tempfile.TemporaryDirectory(prefix="rltransfer-gpu-") as root:
        study = study_on_one_device(gpu, Path(root), budget)
    results["study"] = study
    expected = "cuda" if gpu else "cpu"
    checks[f"a study's 4 runs all ran on the {expected.upper()}"] = (
        study["failed"] == 0
        and all(device.startswith(expected) for device in study["devices"])
        and len(study["devices"]) == 4
    )
    results["checks"] = checks
    for name, passed in checks.items():
        print(f"{'ok    ' if passed else 'FAILED'} {name}")
    write_json(args.out, results)
    print(f"Written to {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
