"""Image transfer methods on the digits demo, paired over seeds: fine-tuning, L2-SP, two sources, head-only, scratch.

    python benchmarks/image_methods.py [--seeds 10] [--out runs/image-methods] [--workers 1] [--tiny]

Every variant learns the digits 5-9 from the same 10 labelled images per class and is tested on the same other
~850 images (``configs/images/digits.yaml``'s target), seed by seed:

- ``finetune``: the demo's recipe (a source CNN trained on the digits 0-4, a new head on its frozen trunk, then
  everything fine-tuned), which also trains the ``scratch`` baseline (the same CNN from random weights);
- ``l2sp``: the same transfer from the same source network with ``training.decay_to: source`` and
  ``weight_decay: 0.01`` (L2-SP: fine-tuning pulls every weight toward the source's);
- ``two-sources``: ``configs/images/digits-two-sources.yaml``: a second CNN trained on the digits 0-4 under stronger
  augmentation (inside that run) beside the demo's source network, a new head on both trunks' concatenated
  features, then everything fine-tuned (its own two-trunk scratch baseline is off here: the comparison is with
  the demo's ``scratch``);
- ``head-only``: a new head on the demo's frozen source trunk alone, up to 100 epochs.

Each variant is compared with ``finetune`` and with ``scratch`` on the same seeds: the median difference in test
accuracy and a two-sided exact sign-flip p-value, Holm-corrected over all those comparisons together. A variant
"pays" only where the corrected p-value is at most 0.05. Results go to OUT/results.json (rewritten atomically after
every seed, so an interrupted run keeps the seeds it finished). ``--tiny`` runs every stage for one or two epochs:
a smoke test of the script, not a measurement."""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from rltransfer.core.config import load_config, resolve_config_path
from rltransfer.core.io import write_json
from rltransfer.study.stats import ALPHA, holm, sign_flip_pvalue
from rltransfer.vision.config import ImageConfig
from rltransfer.vision.pipeline import run_image

VARIANTS = ("finetune", "l2sp", "two-sources", "head-only", "scratch")
COMPARISONS = (
    *((variant, "finetune") for variant in ("l2sp", "two-sources", "head-only")),
    *((variant, "scratch") for variant in ("finetune", "l2sp", "two-sources", "head-only")),
)
"""(variant, baseline) pairs tested, one Holm family."""
L2SP_STRENGTH = 0.01
HEAD_ONLY = [{"name": "head", "train": ["head"], "epochs": 100, "lr": 0.003, "patience": 20}]
TINY = {
    "source.stages": [{"name": "source", "train": ["*"], "epochs": 1}],
    "stages": [
        {"name": "head", "train": ["head"], "epochs": 2, "lr": 0.003},
        {"name": "finetune", "train": ["*"], "epochs": 1, "lr": 0.003},
    ],
    "baseline.stages": [{"name": "scratch", "train": ["*"], "epochs": 1, "lr": 0.003}],
}


def config(shipped: str, name: str, seed: int, root: Path, tiny: bool, **overrides: Any) -> ImageConfig:
    """A shipped image config with this seed, run name and log root (tiny budgets on top with ``tiny``)."""
    base = {"name": name, "seed": seed, "log_root": str(root), "device": "cpu", "cache": "memory"}
    if tiny:
        base.update(TINY)
        if "stages" in overrides:  # head-only keeps its single stage, shortened
            overrides = {**overrides, "stages": [{**overrides["stages"][0], "epochs": 2}]}
    return load_config(resolve_config_path(shipped), ImageConfig, {**base, **overrides})


def run_seed(seed: int, root: Path, tiny: bool) -> dict[str, float]:
    """Test accuracy of every variant on one seed."""
    quiet: dict[str, Any] = {"progress": False, "log": lambda *_: None}
    demo = run_image(config("images/digits", f"finetune-{seed}", seed, root, tiny), **quiet)
    assert demo.scratch is not None and demo.source is not None and demo.source.model_dir is not None
    source = demo.source.model_dir
    from_source = {"source": None, "model.weights": source, "baseline.enabled": False}
    l2sp = run_image(
        config(
            "images/digits", f"l2sp-{seed}", seed, root, tiny, **from_source,
            **{"training.decay_to": "source", "training.weight_decay": L2SP_STRENGTH},
        ),
        **quiet,
    )  # fmt: skip
    two = run_image(
        config(
            "images/digits-two-sources", f"two-sources-{seed}", seed, root, tiny,
            **{"model.second.weights": source, "baseline.enabled": False},
        ),
        **quiet,
    )  # fmt: skip
    head = run_image(
        config("images/digits", f"head-only-{seed}", seed, root, tiny, **from_source, stages=HEAD_ONLY),
        **quiet,
    )
    return {
        "finetune": demo.transfer.accuracy,
        "l2sp": l2sp.transfer.accuracy,
        "two-sources": two.transfer.accuracy,
        "head-only": head.transfer.accuracy,
        "scratch": demo.scratch.accuracy,
    }


def compare(accuracy: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Each variant against fine-tuning and scratch: median paired difference, sign-flip p, Holm-corrected p."""
    raw: dict[tuple[str, str], float] = {}
    rows = []
    for variant, baseline in COMPARISONS:
        differences = [a - b for a, b in zip(accuracy[variant], accuracy[baseline], strict=True)]
        raw[(variant, baseline)] = sign_flip_pvalue(differences)
        rows.append(
            {
                "variant": variant,
                "against": baseline,
                "median_difference": statistics.median(differences),
                "mean_difference": statistics.fmean(differences),
                "wins": sum(d > 0 for d in differences),
                "losses": sum(d < 0 for d in differences),
                "p": raw[(variant, baseline)],
            }
        )
    corrected = holm(raw)
    for row in rows:
        row["p_holm"] = corrected[(row["variant"], row["against"])]
        significant = row["p_holm"] <= ALPHA  # the test's statistic is the sum: its sign gives the direction
        row["verdict"] = (
            ("pays" if row["mean_difference"] > 0 else "worse") if significant else "not shown (unclear)"
        )
    return rows


def table(seeds: list[int], accuracy: dict[str, list[float]], rows: list[dict[str, Any]]) -> str:
    """The per-seed accuracies and the comparisons as Markdown."""
    lines = [
        "| variant | " + " | ".join(str(s) for s in seeds) + " | median |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for variant in VARIANTS:
        values = accuracy[variant]
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {variant} | {cells} | {statistics.median(values):.3f} |")
    lines += [
        "",
        "| variant | against | median difference | wins / losses | p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['against']} | {row['median_difference']:+.3f} | "
            f"{row['wins']} / {row['losses']} | {row['p']:.4f} | {row['p_holm']:.4f} | {row['verdict']} |"
        )
    return "\n".join(lines)


def record(
    done: dict[int, dict[str, float]],
    seed: int,
    result: dict[str, float],
    out: Path,
    tiny: bool,
    started: float,
) -> None:
    """Keep one seed's accuracies, print them, and rewrite results.json over the seeds done so far."""
    done[seed] = result
    print(f"seed {seed}: " + ", ".join(f"{v} {result[v]:.3f}" for v in VARIANTS), flush=True)
    seeds = sorted(done)
    accuracy = {variant: [done[s][variant] for s in seeds] for variant in VARIANTS}
    write_json(
        out / "results.json",
        {
            "seeds": seeds,
            "accuracy": accuracy,
            "comparisons": compare(accuracy),
            "l2sp_strength": L2SP_STRENGTH,
            "tiny": tiny,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--out", default="runs/image-methods", help="folder for the runs and results.json")
    parser.add_argument("--tiny", action="store_true", help="one or two epochs per stage (a smoke test)")
    parser.add_argument(
        "--workers", type=int, default=1, help="seeds run in parallel processes, one thread each (default 1)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    done: dict[int, dict[str, float]] = {}
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {
                pool.submit(run_seed, seed, out / "runs", args.tiny): seed for seed in range(args.seeds)
            }
            for future in as_completed(futures):
                record(done, futures[future], future.result(), out, args.tiny, started)
    else:
        for seed in range(args.seeds):
            record(done, seed, run_seed(seed, out / "runs", args.tiny), out, args.tiny, started)
    seeds = sorted(done)
    accuracy = {variant: [done[seed][variant] for seed in seeds] for variant in VARIANTS}
    print()
    print(table(seeds, accuracy, compare(accuracy)))
    print(f"\n{len(seeds)} seeds in {time.perf_counter() - started:.0f} s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
