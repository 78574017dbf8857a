"""``rltransfer image``: train a source network (optional), transfer it to the target data in stages, compare it
with a network trained from scratch on the same labels, and write the model, report, plots and TensorBoard logs."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from rltransfer.core.config import coerce_config, dump_config, load_config
from rltransfer.core.device import resolve_device
from rltransfer.core.errors import ConfigError
from rltransfer.core.interrupt import Interrupted, stop_on_signals
from rltransfer.core.io import (
    atomic_path,
    lock_run_dir,
    prepare_run_dir,
    release_run_dir,
    versions,
    write_json,
    write_text,
)
from rltransfer.core.record import RunRecord
from rltransfer.core.state import rng_state, set_rng_state
from rltransfer.vision.cache import FeatureCache
from rltransfer.vision.config import DataConfig, ImageConfig, StageConfig
from rltransfer.vision.data import DataError, Preprocessing, TaskData, build_transform, load_task, open_image
from rltransfer.vision.models import (
    CUSTOM,
    MODEL_FILE,
    SPEC_FILE,
    ModelSpec,
    adopt_module,
    build_classifier,
    load_classifier,
    spec_dict,
)
from rltransfer.vision.stages import StageResult, check_stages
from rltransfer.vision.trainer import StopForSignal, Trainer


@dataclass
class PhaseResult:
    """One trained network: its stages, test (or validation) accuracy and where it was saved."""

    name: str
    stages: list[StageResult]
    accuracy: float
    evaluated_on: str
    model_dir: str | None
    confusion: list[list[int]] = field(default_factory=list)


@dataclass
class ImageResult:
    """The outcome of ``rltransfer image``: source, transfer and scratch phases and the run directory."""

    run_dir: Path
    classes: list[str]
    transfer: PhaseResult
    source: PhaseResult | None = None
    scratch: PhaseResult | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    transferred: bool = True
    """False when there was nothing to transfer: no source stage, no starting weights, no module of the user's."""

    @property
    def gain(self) -> float | None:
        """Transfer accuracy minus scratch accuracy (None without a baseline)."""
        return None if self.scratch is None else self.transfer.accuracy - self.scratch.accuracy

    def summary(self) -> str:
        on = self.transfer.evaluated_on
        lines = [f"{self.run_dir}: transferred model {on} accuracy {self.transfer.accuracy:.3f}"]
        if not self.transferred:
            lines.append("  nothing was transferred: no source stage and no starting weights (random start)")
        if self.scratch is not None:
            lines.append(
                f"  from scratch on the same labels: {self.scratch.accuracy:.3f} (transfer "
                f"{'+' if self.gain >= 0 else ''}{self.gain:.3f})"
            )
        if self.source is not None:
            lines.append(f"  source network ({self.source.evaluated_on}): {self.source.accuracy:.3f}")
        lines.append(f"  model: {self.transfer.model_dir}  ({self.seconds:.1f} s)")
        return "\n".join(lines)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_image(
    config: ImageConfig | str | Path | dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
    model: nn.Module | None = None,
    resume: str | Path | None = None,
) -> ImageResult:
    """Run a whole image-transfer config (an :class:`ImageConfig`, a YAML path or shipped name such as
    ``images/digits``, or a mapping) and return what it measured.

    ``model`` replaces ``model.arch`` with your own ``nn.Module`` (its head is found and replaced like a
    torchvision model's; the scratch baseline is a copy with every parameter re-initialised). ``resume`` continues
    an interrupted run from its directory's checkpoint (its own config.yaml; ``config`` is then ignored).
    Ctrl-C or SIGTERM saves a checkpoint at the end of the current epoch and raises :class:`Interrupted`."""
    started = time.perf_counter()
    checkpoint: dict[str, Any] | None = None
    if resume is not None:
        config, checkpoint = _resumed(Path(resume), model)
    elif not isinstance(config, (ImageConfig, dict, str, Path)):
        raise ConfigError(
            "run_image needs a config (an ImageConfig, a YAML path or a mapping) or resume=RUN_DIR."
        )
    else:
        config = coerce_config(config, ImageConfig)
    starts_random = config.source is None and config.model.weights is None and model is None
    if config.training.decay_to == "source" and starts_random:
        raise ConfigError(
            "`training.decay_to: source` pulls the transferred weights toward the ones the network started "
            "from, but this run starts from random weights (no `source`, no `model.weights`, no module of "
            "your own). Give one of those, or set `training.decay_to: zero`."
        )
    _check_second(config, model)
    device = resolve_device(config.device)
    target = load_task(config.data, config.model.arch, config.seed, "data")
    source_task = (
        load_task(config.source.data, config.model.arch, config.seed, "source.data")
        if config.source
        else None
    )
    done: dict[str, PhaseResult] = {}
    first = None
    if checkpoint is not None:
        run_dir = Path(resume)  # type: ignore[arg-type]
        lock_run_dir(run_dir)
        done = {name: phase_from_dict(item) for name, item in checkpoint["done"].items()}
    else:  # the first network is built before anything is written: a bad architecture or weights file stops here
        first = _first_network(config, source_task, target, model)
        run_dir = prepare_run_dir(config.log_root, config.name)
        write_text(run_dir / "config.yaml", dump_config(config))
    cache = FeatureCache(Path(config.cache_dir) if config.cache == "disk" else None)
    log(
        f"Run directory {run_dir}; device {device}; {len(target.classes)} classes, {len(target.train)} training "
        f"and {len(target.val)} validation images"
        + (f"; resuming {checkpoint['phase']}" if checkpoint else "")
    )
    context = _Context(
        config, device, run_dir, cache, progress, log, done, type(model).__name__ if model else None
    )
    record = RunRecord(run_dir)
    record.update(kind="image", status="running", command=sys.argv, versions=versions())
    try:
        _run_phases(context, record, _phases(config, source_task, target), checkpoint, model, first)
    finally:
        release_run_dir(run_dir)
    result = ImageResult(
        run_dir, target.classes, done["transfer"], done.get("source"), done.get("scratch"), cache.hits,
        cache.misses, time.perf_counter() - started,
        config.source is not None or config.model.weights is not None or model is not None,
    )  # fmt: skip
    _report(config, result)
    record.update(status="finished", seconds=round(result.seconds, 2), accuracy=result.transfer.accuracy)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return result


def _resumed(run_dir: Path, model: nn.Module | None) -> tuple[ImageConfig, dict[str, Any]]:
    """The config and checkpoint of an interrupted run, checked against the module it is resumed with."""
    checkpoint = read_checkpoint(run_dir)
    config = load_config(run_dir / "config.yaml", ImageConfig)
    custom = checkpoint.get("custom")
    if custom != (type(model).__name__ if model is not None else None):
        raise ConfigError(
            f"{run_dir} was trained with "
            + (
                f"your own module {custom}: resume it from Python, run_image(resume=..., model={custom}(...))."
                if custom
                else f"`model.arch: {config.model.arch}`; resume it without a module."
            )
        )
    return config, checkpoint


def _check_second(config: ImageConfig, model: nn.Module | None) -> None:
    """``model.second`` needs a first source to sit beside and an architecture by name (checked before anything
    is built or written)."""
    if config.model.second is None:
        return
    if model is not None:
        raise ConfigError(
            f"`model.second` puts a {config.model.second.arch} trunk beside a `model.arch` network, but this run "
            f"replaces `model.arch` with your own module {type(model).__name__}. Build the two-trunk network as "
            "your own module (rltransfer.vision.TwoTrunks shows how), or drop `model.second`."
        )
    if config.source is None and config.model.weights is None:
        raise ConfigError(
            "`model.second` sets a second source's trunk beside the first's, but the first network starts from "
            "random weights (no `model.weights`, no `source` section): its features would be noise beside the "
            "second's. Give the first source in `model.weights` (or train it in `source`), or, for a one-source "
            f"transfer, move `{config.model.second.weights}` to `model.weights` and drop `model.second`."
        )


def _first_network(
    config: ImageConfig, source_task: TaskData | None, target: TaskData, model: nn.Module | None
) -> tuple[nn.Module, ModelSpec, str | None]:
    """The first phase's network, with every stage's layer selectors checked against the network they train.
    With ``model.second`` and a source phase, the source phase trains ``model.arch`` alone and the two-trunk
    network (built here with the second's weights, so a bad second stops the run now) checks the other stages."""
    seed_everything(config.seed)
    first = _network(config, source_task or target, config.model.weights, model, pair=source_task is None)
    later = first
    if source_task is not None and config.model.second is not None:
        state = rng_state()  # the source phase trains exactly as it would without this check
        later = _network(config, target, None, model, pair=True)
        set_rng_state(state)
    for where, stages, network in (
        ("source.stages", config.source.stages if config.source else [], first),
        ("stages", config.stages, later),
        ("baseline.stages", config.baseline.stages if config.baseline.enabled else [], later),
    ):
        check_stages(network[0], [network[1].head, *network[1].aux_heads], stages, where)
    return first


def _phases(
    config: ImageConfig, source_task: TaskData | None, target: TaskData
) -> list[tuple[str, TaskData, DataConfig, list[StageConfig], bool]]:
    """The phases in order: name, data, its config, stages, whether its model is saved."""
    plan: list[tuple[str, TaskData, DataConfig, list[StageConfig], bool]] = []
    if source_task is not None and config.source is not None:
        plan.append(("source", source_task, config.source.data, config.source.stages, True))
    plan.append(("transfer", target, config.data, config.stages, True))
    if config.baseline.enabled:
        plan.append(("scratch", target, config.data, config.baseline.stages, False))
    return plan


def _run_phases(
    context: _Context,
    record: RunRecord,
    plan: list[tuple[str, TaskData, DataConfig, list[StageConfig], bool]],
    checkpoint: dict[str, Any] | None,
    model: nn.Module | None,
    first: tuple[nn.Module, ModelSpec, str | None] | None,
) -> None:
    """Run the phases not done yet, each from a fresh network (the first one's was built already), keeping
    the record's status in step with what happens."""
    config, done = context.config, context.done
    try:
        with stop_on_signals(resume=(context.run_dir, "image")):
            for name, task, data, stages, save in plan:
                if name in done:
                    continue
                state = (
                    checkpoint["state"] if checkpoint is not None and checkpoint["phase"] == name else None
                )
                if first is None:
                    seed_everything(config.seed)
                    pair = name != "source"  # with model.second: the source phase trains model.arch alone
                    if name == "scratch":
                        first = _network(config, task, None, model, fresh=True, pair=pair)
                    elif name == "transfer" and "source" in done:
                        first = _network(config, task, done["source"].model_dir, model, pair=pair)
                    else:
                        first = _network(config, task, config.model.weights, model, pair=pair)
                done[name] = _phase(context, name, task, data, stages, first, save, state)
                first = None
                _write_checkpoint(context, name, None)
    except StopForSignal as stop:
        record.update(status="interrupted", signal=stop.signum)
        raise Interrupted(stop.signum, context.run_dir, "image", stop.detail) from None
    except BaseException as error:
        stopped = isinstance(
            error, KeyboardInterrupt
        )  # a second Ctrl-C: no new checkpoint, the last one stays
        record.update(status="interrupted" if stopped else "failed", error=f"{type(error).__name__}: {error}")
        raise


CHECKPOINT_FILE = "checkpoint.pt"


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of an interrupted image run, read weights-only, with clear errors for what cannot resume."""
    path = run_dir / CHECKPOINT_FILE
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not an rltransfer image run (no config.yaml). Give the run directory."
        )
    kind = RunRecord.read(run_dir).get("kind")
    if kind in ("train", "transfer"):
        raise ConfigError(
            f"{run_dir} is a `{kind}` run, not an image run (`rltransfer {kind} --resume` continues those)."
        )
    if not path.is_file():
        status = RunRecord.read(run_dir).status
        raise ConfigError(
            f"{run_dir} has no checkpoint to resume ({'the run finished' if status == 'finished' else 'it stopped before its first checkpoint'}). "
            "Start it again with `rltransfer image CONFIG`."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("version") != 1 or "phase" not in checkpoint:
            raise ValueError("not an rltransfer image checkpoint")
    except Exception as error:
        raise ConfigError(
            f"The checkpoint {path} is truncated or damaged ({str(error).splitlines()[0]}); it cannot be resumed. "
            "Start the run again with `rltransfer image CONFIG`."
        ) from None
    return checkpoint


def _write_checkpoint(context: _Context, phase: str, state: dict[str, Any] | None) -> None:
    data = {
        "version": 1,
        "phase": phase,
        "done": {name: asdict(result) for name, result in context.done.items()},
        "state": state,
        "custom": context.custom,
    }
    with atomic_path(context.run_dir / CHECKPOINT_FILE, suffix=".pt") as tmp:
        torch.save(data, tmp)


def phase_from_dict(data: dict[str, Any]) -> PhaseResult:
    """A PhaseResult back from its checkpoint form."""
    stages = [StageResult(**item) for item in data["stages"]]
    return PhaseResult(**{**data, "stages": stages})


@dataclass
class _Context:
    """What every phase of one run shares."""

    config: ImageConfig
    device: str
    run_dir: Path
    cache: FeatureCache
    progress: bool
    log: Any
    done: dict[str, PhaseResult] = field(default_factory=dict)
    custom: str | None = None
    """Class name of the user's own module, when one replaced ``model.arch``."""


def _network(
    config: ImageConfig,
    task: TaskData,
    weights: str | None,
    custom: nn.Module | None,
    fresh: bool = False,
    pair: bool = True,
) -> tuple[nn.Module, ModelSpec, str | None]:
    """(model with heads for the task's classes, its spec, where its weights came from). With ``model.second``
    and ``pair`` it is the two-trunk network, the second trunk from ``model.second.weights`` (random when
    ``fresh``)."""
    prep = task.preprocessing
    second = config.model.second if pair and custom is None else None
    spec = ModelSpec(
        arch=config.model.arch if custom is None else f"{CUSTOM}{type(custom).__name__}",
        num_classes=len(task.classes),
        classes=task.classes,
        in_channels=prep.channels,
        image_size=prep.image_size,
        mean=list(prep.mean),
        std=list(prep.std),
        dropout=config.model.dropout,
        second=second.arch if second is not None else None,
    )
    if second is not None:
        second_weights = None if fresh else second.weights
        origin = f"{weights or 'random'} + {second_weights or 'random'}"
        return build_classifier(spec, weights, second_weights), spec, origin
    if custom is None:
        return build_classifier(spec, weights), spec, weights
    model = adopt_module(custom, spec, weights, fresh)
    return model, spec, weights if weights else ("random" if fresh else "as given")


def _phase(
    context: _Context,
    name: str,
    task: TaskData,
    data: DataConfig,
    stages: list[StageConfig],
    network: tuple[nn.Module, ModelSpec, str | None],
    save: bool = True,
    resume: dict[str, Any] | None = None,
) -> PhaseResult:
    """Train one network through its stages, score it on the test (else validation) set, save it."""
    config, run_dir = context.config, context.run_dir
    model, spec, weights = network
    anchors = None
    if name == "transfer" and config.training.decay_to == "source":  # L2-SP toward the weights it starts from
        heads = tuple(f"{head}." for head in (spec.head, *spec.aux_heads))
        anchors = {
            key: param.detach().clone()
            for key, param in model.named_parameters()
            if not key.startswith(heads)
        }
    writer = SummaryWriter(str(run_dir / name))
    trainer = Trainer(
        model=model, heads=[spec.head, *spec.aux_heads], num_classes=spec.num_classes, training=config.training,
        device=context.device, prep=task.preprocessing, batch_size=data.batch_size, workers=data.workers,
        cache_mode=config.cache, cache=context.cache, augmenting=data.augment.active(),
        frozen_batchnorm=config.model.frozen_batchnorm, writer=writer, seed=config.seed, progress=context.progress,
        label=name, log=context.log, checkpoint=lambda state: _write_checkpoint(context, name, state),
        checkpoint_seconds=config.checkpoint_seconds, anchors=anchors,
    )  # fmt: skip
    try:
        results = trainer.run_stages(stages, task.train, task.val, resume)
        evaluated_on = "test" if task.test is not None else "validation"
        accuracy, confusion = _score(trainer, writer, task, name, evaluated_on, run_dir)
        writer.add_hparams(
            _phase_hparams(config, name, spec, weights, stages, len(task.train)),
            {
                f"hparams/{evaluated_on}_accuracy": accuracy,
                "hparams/best_val_accuracy": results[-1].best_val_accuracy,
            },
            run_name=".",
        )
    finally:
        writer.close()
    model_dir = None
    if save:
        model_dir = run_dir / ("model" if name == "transfer" else f"{name}-model")
        save_classifier(trainer.model, spec, model_dir)
    context.log(f"{name}: {evaluated_on} accuracy {accuracy:.3f}")
    return PhaseResult(
        name, results, accuracy, evaluated_on, str(model_dir) if model_dir else None, confusion.tolist()
    )


def _score(
    trainer: Trainer, writer: SummaryWriter, task: TaskData, name: str, evaluated_on: str, run_dir: Path
) -> tuple[float, np.ndarray]:
    """Accuracy and confusion matrix on the held-out set, written as confusion-NAME.png and to TensorBoard."""
    predicted, truth = trainer.predictions(task.test if task.test is not None else task.val)
    accuracy = float((predicted == truth).float().mean())
    confusion = confusion_matrix(predicted, truth, len(task.classes))
    writer.add_scalar(f"{evaluated_on}/accuracy", accuracy, trainer.epoch)
    figure = confusion_figure(confusion, task.classes, f"{name}: {evaluated_on} accuracy {accuracy:.3f}")
    with atomic_path(run_dir / f"confusion-{name}.png", suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    writer.add_figure(f"{evaluated_on}/confusion_matrix", figure, trainer.epoch, close=True)
    return accuracy, confusion


def _phase_hparams(
    config: ImageConfig,
    name: str,
    spec: ModelSpec,
    weights: str | None,
    stages: list[StageConfig],
    images: int,
) -> dict[str, Any]:
    return {
        "phase": name,
        "arch": spec.arch if spec.second is None else f"{spec.arch} + {spec.second}",
        "weights": str(weights or "random"),
        "stages": " -> ".join(f"{s.name}[{','.join(s.train)}]@{s.lr:g}" for s in stages),
        "dropout": config.model.dropout,
        "optimizer": config.training.optimizer,
        "weight_decay": config.training.weight_decay,
        "l1": config.training.l1,
        "center_loss": config.training.center_loss,
        "train_images": images,
    }


def save_classifier(model: nn.Module, spec: ModelSpec, folder: Path) -> None:
    """model.pt (a plain state dict, loadable weights-only) and model.json (how to rebuild it), each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    with atomic_path(folder / MODEL_FILE, suffix=".pt") as tmp:
        torch.save(state, tmp)
    write_json(folder / SPEC_FILE, spec_dict(spec))


def confusion_matrix(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> np.ndarray:
    """counts[true class, predicted class]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (truth.numpy(), predicted.numpy()), 1)
    return counts


def confusion_figure(counts: np.ndarray, classes: list[str], title: str) -> Figure:
    """A matplotlib figure of the confusion matrix (rows: true class, columns: predicted)."""
    size = max(3.5, 0.45 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues")
    ticks = range(len(classes))
    axes.set_xticks(list(ticks), classes, rotation=90 if len(classes) > 10 else 0)
    axes.set_yticks(list(ticks), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    if len(classes) <= 20:
        peak = counts.max() or 1
        for i in ticks:
            for j in ticks:
                axes.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if counts[i, j] > peak / 2 else "black",
                )
    figure.tight_layout()
    return figure


def _report(config: ImageConfig, result: ImageResult) -> None:
    phases = [p for p in (result.source, result.transfer, result.scratch) if p is not None]
    data = {
        "name": config.name,
        "classes": result.classes,
        "accuracy": {p.name: p.accuracy for p in phases},
        "evaluated_on": result.transfer.evaluated_on,
        "gain_over_scratch": result.gain,
        "phases": [asdict(p) for p in phases],
        "cache": {"hits": result.cache_hits, "misses": result.cache_misses},
        "seconds": round(result.seconds, 2),
        "versions": versions(),
    }
    write_json(result.run_dir / "report.json", data)
    second = config.model.second
    arch = f"`{config.model.arch}`" + (
        f" + `{second.arch}` side by side (`model.second`: {second.weights}; the scratch baseline has both trunks "
        "from random weights)"
        if second is not None
        else ""
    )
    lines = [
        f"# Image transfer: {config.name}",
        "",
        f"Architecture {arch}, classes "
        f"{', '.join(result.classes)}; accuracy on the {result.transfer.evaluated_on} set.",
        "",
        "| network | accuracy | stages (best epoch / epochs run, best val accuracy, trunk cached) |",
        "|---|---|---|",
    ]
    for phase in phases:
        stages = "; ".join(
            f"{s.name}: {s.best_epoch}/{s.epochs_run}, {s.best_val_accuracy:.3f}{', cached' if s.cached else ''}"
            for s in phase.stages
        )
        lines.append(f"| {phase.name} | {phase.accuracy:.3f} | {stages} |")
    if not result.transferred:
        lines += [
            "",
            "Nothing was transferred: no source stage and no starting weights, so the 'transfer' network started "
            "from random weights like the baseline; the difference below is between two random starts.",
        ]
    if result.gain is not None:
        ahead = "transfer ahead" if result.gain > 0 else "transfer NOT ahead"
        lines += [
            "",
            f"Transfer minus scratch: {result.gain:+.3f} ({ahead} on this seed; one run is not a test: "
            "compare several seeds before calling it).",
        ]
    lines += ["", f"Run time {result.seconds:.1f} s. Confusion matrices: confusion-*.png.", ""]
    write_text(result.run_dir / "report.md", "\n".join(lines))


def predict(
    model_path: str | Path, images: list[str | Path], device: str = "auto", module: nn.Module | None = None
) -> list[tuple[str, str, float]]:
    """(image, predicted class, probability) for each image, with a model saved by ``rltransfer image``
    (``module``: an instance of your class, for a model trained from your own ``nn.Module``)."""
    device = resolve_device(device)
    model, spec = load_classifier(model_path, device, module)
    prep = Preprocessing(spec.image_size, spec.in_channels, tuple(spec.mean), tuple(spec.std))
    transform = build_transform(prep)
    rows = []
    with torch.no_grad():
        for path in images:
            if Path(path).is_dir():
                raise DataError(f"{path} is a folder; give image files (e.g. {path}/*.png).")
            if not Path(path).is_file():
                raise DataError(f"Image {path} does not exist. Check the path.")
            try:
                image = open_image(Path(path), spec.in_channels)
            except DataError:  # (training's advice, skip_corrupt, means nothing to predict)
                raise DataError(
                    f"Image {path} is corrupt, truncated or not an image; leave it out."
                ) from None
            tensor = transform(image).unsqueeze(0).to(device)
            probabilities = torch.softmax(model(tensor), dim=1)[0]
            best = int(probabilities.argmax())
            rows.append((str(path), spec.classes[best], float(probabilities[best])))
    return rows
