"""Head-only training of resnet18: epoch time with cached bottleneck features vs recomputing the frozen trunk.

    python benchmarks/image_cache.py [--images-per-class 40] [--classes 10] [--size 112] [--epochs 3]

Generates a synthetic image folder (speed does not depend on what the pictures show), builds resnet18 with random
weights (the same cost as ImageNet weights, and no download), replaces its head and freezes the trunk, then times
the same head stage twice through rltransfer's trainer: with the cache off (every epoch runs the trunk) and with the
memory cache (the trunk runs once to fill it, then epochs train the head on stored features)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rltransfer.vision.cache import FeatureCache
from rltransfer.vision.config import DataConfig, StageConfig, TrainingConfig
from rltransfer.vision.data import load_task
from rltransfer.vision.models import ModelSpec, build_classifier
from rltransfer.vision.trainer import Trainer


def make_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.classes, args.images_per_class, args.size)
        data = DataConfig(folder=tmp, image_size=args.size, batch_size=32)
        task = load_task(data, "resnet18", seed=0)
        spec = ModelSpec(
            arch="resnet18", num_classes=len(task.classes), classes=task.classes, image_size=args.size
        )
        stage = StageConfig(name="head", train=["head"], epochs=args.epochs, patience=None, lr=1e-3)
        timings = {}
        for mode in ("off", "memory"):
            model = build_classifier(spec)
            cache = FeatureCache()
            trainer = Trainer(
                model=model,
                heads=[spec.head, *spec.aux_heads],
                num_classes=spec.num_classes,
                training=TrainingConfig(),
                device="cpu",
                prep=task.preprocessing,
                batch_size=32,
                cache_mode=mode,
                cache=cache,
                progress=False,
                log=lambda *_: None,
            )
            fill = 0.0
            if mode == "memory":
                started = time.perf_counter()
                for images in (task.train.with_transform(task.val.transform), task.val):
                    cache.features(model, trainer.heads, task.preprocessing, images, "cpu", 64)
                fill = time.perf_counter() - started
            started = time.perf_counter()
            result = trainer.run_stage(stage, task.train, task.val)
            timings[mode] = (fill, (time.perf_counter() - started) / args.epochs, result.cached)
    threads = torch.get_num_threads()
    recompute, cached = timings["off"][1], timings["memory"][1]
    print(
        f"resnet18 head-only, {len(task.train)} train + {len(task.val)} val images at {args.size}px, "
        f"{args.epochs} epochs, CPU ({threads} threads)"
    )
    print(f"  recomputing the frozen trunk: {recompute:.3f} s per epoch")
    print(
        f"  cached bottlenecks:           {cached:.4f} s per epoch (+ {timings['memory'][0]:.2f} s once to fill)"
    )
    print(f"  speed-up per epoch: {recompute / cached:.0f}x")
    for epochs in (10, 30):
        total_cached = timings["memory"][0] + epochs * cached
        print(
            f"  a {epochs}-epoch head stage: {epochs * recompute:.1f} s recomputing vs {total_cached:.1f} s cached "
            f"({epochs * recompute / total_cached:.1f}x)"
        )


if __name__ == "__main__":
    main()
