"""Train an image classifier through its stages: set up each stage, run its epochs with early stopping on
validation, restore the best epoch, and save resumable snapshots along the way; head-only stages train on cached
bottleneck features. What a stage trains is :mod:`rltransfer.vision.stages`; one epoch is
:mod:`rltransfer.vision.epochs`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rltransfer.core.interrupt import stop_requested
from rltransfer.core.layers import count_parameters
from rltransfer.core.state import cpu_copy, rng_state, set_rng_state
from rltransfer.vision.cache import FeatureCache
from rltransfer.vision.config import StageConfig, TrainingConfig
from rltransfer.vision.data import ImageSet, Preprocessing
from rltransfer.vision.epochs import EpochLoop
from rltransfer.vision.stages import (
    Monitor,
    StageResult,
    build_scheduler,
    build_stage_optimizer,
    check_finite,
    configure_stage,
)


class StopForSignal(Exception):
    """Raised after the checkpoint was written because Ctrl-C or SIGTERM asked to stop."""

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(detail)
        self.signum = signum
        self.detail = detail


@dataclass
class _Stage:
    """What one stage holds while it runs."""

    config: StageConfig
    index: int
    done: list[StageResult]
    trainable: list[str]
    counts: tuple[int, int]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    centers: torch.optim.Optimizer | None
    monitor: Monitor
    cached: bool = False
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Trainer:
    """Trains one model through its stages on a task, logging to a TensorBoard writer."""

    model: nn.Module
    heads: list[str]
    """The main head first, then the auxiliary heads."""
    num_classes: int
    training: TrainingConfig
    device: str
    prep: Preprocessing
    batch_size: int
    workers: int = 0
    cache_mode: str = "auto"
    cache: FeatureCache = field(default_factory=FeatureCache)
    augmenting: bool = False
    frozen_batchnorm: str = "fixed"
    writer: Any = None
    seed: int = 0
    epoch: int = 0
    """Epochs run so far over every stage (the x axis in TensorBoard)."""
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    """Receives a snapshot to write (every ``checkpoint_seconds``, at stage ends and on a stop signal)."""
    checkpoint_seconds: float = 60.0
    progress: bool = True
    label: str = "train"
    """Name of this network in progress bars and messages (source, transfer, scratch)."""
    log: Callable[[str], None] = print
    anchors: dict[str, torch.Tensor] | None = None
    """L2-SP: parameter name -> the value weight decay pulls it toward (the weights this network started from)."""

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.loop = EpochLoop(
            self.model, self.heads, self.num_classes, self.training, self.device, self.prep, self.batch_size,
            self.workers, self.cache, self.label, self.seed,
        )  # fmt: skip
        self._last_write = time.monotonic()

    def run_stages(
        self, stages: list[StageConfig], train: ImageSet, val: ImageSet, resume: dict[str, Any] | None = None
    ) -> list[StageResult]:
        """Run the stages in order (from a checkpoint's position when ``resume`` is given)."""
        done = [StageResult(**item) for item in resume["stage_results"]] if resume else []
        if resume is not None and resume["stage_epoch"] == 0:  # saved at a stage boundary
            self.loop.center_optimizer()
            self.model.load_state_dict(resume["model"])
            if self.loop.center is not None and resume["center"] is not None:
                self.loop.center.load_state_dict(resume["center"])
            self.epoch = resume["epoch"]
            set_rng_state(resume["rng"])
        for index in range(len(done), len(stages)):
            here = resume if resume is not None and resume["stage_index"] == index else None
            done.append(self.run_stage(stages[index], train, val, index, done, here))
        return done

    def run_stage(
        self,
        stage: StageConfig,
        train: ImageSet,
        val: ImageSet,
        index: int = 0,
        done: list[StageResult] | None = None,
        resume: dict[str, Any] | None = None,
    ) -> StageResult:
        """Train one stage to its end or early stop, then restore its best epoch's weights. With a checkpoint
        (``resume``) the stage continues after its last saved epoch, as if it had never stopped."""
        state = self._begin(stage, index, done or [])
        first_epoch = 1
        if resume is not None and resume["stage_epoch"] > 0:
            first_epoch = resume["stage_epoch"] + 1
            self._restore(resume, state)
        state.cached = self._use_cache(state.trainable)
        loaders = (self.loop.feature_loaders if state.cached else self.loop.image_loaders)(train, val)
        trainable_count, frozen_count = state.counts
        self.log(
            f"{self.label} stage {stage.name}: training {', '.join(state.trainable)} ({trainable_count:,} "
            f"parameters, {frozen_count:,} frozen){'; trunk features cached' if state.cached else ''}"
            + (f"; resumed after epoch {first_epoch - 1}" if first_epoch > 1 else "")
        )
        last_epoch, stopped = self._epochs(state, loaders, first_epoch)
        return self._end(state, last_epoch, stopped)

    def _begin(self, stage: StageConfig, index: int, done: list[StageResult]) -> _Stage:
        trainable = configure_stage(self.model, stage.train, self.heads, self.frozen_batchnorm)
        counts = count_parameters(self.model)
        optimizer = build_stage_optimizer(self.model, stage, self.training, self.heads, self.anchors)
        return _Stage(
            stage, index, done, trainable, counts, optimizer, build_scheduler(optimizer, stage),
            self.loop.center_optimizer(), Monitor(stage.monitor, stage.patience),
        )  # fmt: skip

    def _epochs(self, state: _Stage, loaders: tuple[Any, Any], first_epoch: int) -> tuple[int, bool]:
        """Run the stage's epochs from `first_epoch`; (the last epoch run, whether early stopping ended it)."""
        stage = state.config
        bar = tqdm(
            total=stage.epochs, initial=first_epoch - 1, desc=f"{self.label}/{stage.name}", unit="epoch",
            disable=not self.progress, leave=False,
        )  # fmt: skip
        stage_epoch, stopped = first_epoch - 1, False
        for stage_epoch in range(first_epoch, stage.epochs + 1):
            self.loop.epoch_seed = self.seed * 100_003 + self.epoch
            train_loss, train_acc = self.loop.train_epoch(
                loaders[0], state.optimizer, state.centers, state.cached, stage.name, self.epoch + 1
            )
            val_loss, val_acc = self.loop.evaluate(loaders[1], state.cached)
            self.epoch += 1
            self._log_epoch(state.optimizer, train_loss, train_acc, val_loss, val_acc)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
            if state.scheduler is not None:
                state.scheduler.step()
            check_finite(self.model, f"{self.label} stage {stage.name}, epoch {stage_epoch}", stage.lr)
            if state.monitor.update(stage_epoch, val_acc, val_loss, self.model):
                stopped = stage_epoch < stage.epochs
                break
            if stage_epoch < stage.epochs:
                self._checkpoint_if_due(
                    lambda epoch=stage_epoch: self._snapshot(state.index, epoch, state.done, state),
                    stage.name,
                )
        bar.close()
        return stage_epoch, stopped

    def _end(self, state: _Stage, last_epoch: int, stopped: bool) -> StageResult:
        """Restore the best epoch's weights, report the stage, and save the stage boundary."""
        stage, monitor = state.config, state.monitor
        assert monitor.best_state is not None and monitor.best is not None
        self.model.load_state_dict(monitor.best_state)
        best_acc, best_loss = (
            (monitor.best[0], -monitor.best[1])
            if stage.monitor == "val_accuracy"
            else (monitor.best[1], -monitor.best[0])
        )
        self.log(
            f"{self.label} stage {stage.name}: best epoch {monitor.best_epoch} of {last_epoch} (val accuracy "
            f"{best_acc:.3f}, loss {best_loss:.3f}){', stopped early' if stopped else ''}; its weights are restored"
        )
        result = StageResult(
            stage.name, last_epoch, monitor.best_epoch, best_acc, best_loss, state.trainable, *state.counts,
            state.cached, stopped, time.perf_counter() - state.started,
        )  # fmt: skip
        # a stage boundary is always saved: the next stage starts from the restored best weights
        self._checkpoint_if_due(
            lambda: self._snapshot(state.index + 1, 0, [*state.done, result], None), stage.name, force=True
        )
        return result

    def _checkpoint_if_due(
        self, snapshot: Callable[[], dict[str, Any]], stage: str, force: bool = False
    ) -> None:
        signum = stop_requested()
        now = time.monotonic()
        if self.checkpoint is not None and (
            force or signum or now - self._last_write >= self.checkpoint_seconds
        ):
            self.checkpoint(snapshot())
            self._last_write = now
        if signum:
            raise StopForSignal(signum, f" during {self.label} stage {stage} after epoch {self.epoch}")

    def _snapshot(
        self, stage_index: int, stage_epoch: int, done: list[StageResult], state: _Stage | None
    ) -> dict[str, Any]:
        """Everything needed to continue exactly here: weights, optimizer, schedule, early stopping, RNG."""
        monitor = state.monitor if state is not None else None
        center = self.loop.center
        return {
            "stage_index": stage_index,
            "stage_epoch": stage_epoch,
            "epoch": self.epoch,
            "stage_results": [asdict(result) for result in done],
            "model": cpu_copy(self.model.state_dict()),
            "optimizer": cpu_copy(state.optimizer.state_dict()) if state is not None else None,
            "scheduler": (
                state.scheduler.state_dict() if state is not None and state.scheduler is not None else None
            ),
            "monitor": None
            if monitor is None
            else {
                "best": list(monitor.best) if monitor.best is not None else None,
                "best_epoch": monitor.best_epoch,
                "since_best": monitor.since_best,
                "best_state": cpu_copy(monitor.best_state),
            },
            "center": cpu_copy(center.state_dict()) if center is not None else None,
            "rng": rng_state(),
        }

    def _restore(self, saved: dict[str, Any], state: _Stage) -> None:
        self.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None and saved["scheduler"] is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        monitor = state.monitor
        kept = saved["monitor"]
        monitor.best = tuple(kept["best"]) if kept["best"] is not None else None
        monitor.best_epoch, monitor.since_best = kept["best_epoch"], kept["since_best"]
        monitor.best_state = kept["best_state"]
        if self.loop.center is not None and saved["center"] is not None:
            self.loop.center.load_state_dict(saved["center"])
        self.epoch = saved["epoch"]
        set_rng_state(saved["rng"])

    def _use_cache(self, trainable: list[str]) -> bool:
        head = self.heads[0]
        if self.cache_mode == "off" or trainable != [head]:
            return False
        if self.frozen_batchnorm == "update_stats":
            return False  # the trunk's statistics change while training: its outputs are not fixed
        return not self.augmenting or self.cache_mode in ("memory", "disk")

    def evaluate(self, loader: Any, cached: bool = False) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the model in eval mode."""
        return self.loop.evaluate(loader, cached)

    def predictions(self, images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, true labels) over a data set."""
        return self.loop.predictions(images)

    def _log_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
    ) -> None:
        if self.writer is None:
            return
        for tag, value in (
            ("loss/train", train_loss),
            ("loss/val", val_loss),
            ("accuracy/train", train_acc),
            ("accuracy/val", val_acc),
        ):
            self.writer.add_scalar(tag, value, self.epoch)
        for group in optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group['name']}", group["lr"], self.epoch)
