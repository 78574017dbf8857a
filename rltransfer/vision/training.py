"""Train an image classifier in stages: choose the layers that train, build per-group optimizers, early-stop on
validation, restore the best epoch; head-only stages train on cached bottleneck features."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from rltransfer.checkpoints import cpu_copy, rng_state, set_rng_state
from rltransfer.errors import ConfigError, LayerSelectionError, NumericalError
from rltransfer.interrupt import stop_requested
from rltransfer.layers import (
    _split_pinned_ancestors,
    _unpin_eval,
    count_parameters,
    freeze_modules,
    select_layers,
    unfreeze,
)
from rltransfer.optim import L1Penalty, optimizer_class
from rltransfer.vision.cache import FeatureCache
from rltransfer.vision.config import StageConfig, TrainingConfig
from rltransfer.vision.data import ImageSet, Preprocessing
from rltransfer.vision.models import AUX_LOSS_WEIGHT, split_outputs

HEAD = "head"


class CenterLoss(nn.Module):
    """Center loss (Wen et al., 2016): mean squared distance of each feature to its class's center. The centers
    are parameters with their own optimizer; they pull same-class features together on small data sets."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (features - self.centers[labels]).pow(2).sum(dim=1).mean()


@dataclass
class StageResult:
    """What one stage did: epochs run, the restored best epoch and its validation score, what trained."""

    name: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    trainable: list[str]
    trainable_parameters: int
    frozen_parameters: int
    cached: bool
    stopped_early: bool
    seconds: float


@dataclass
class Monitor:
    """Early stopping on validation accuracy (ties go to the lower loss) or loss, with the best weights kept."""

    mode: str
    patience: int | None
    best: tuple[float, float] | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    since_best: int = 0

    def update(self, epoch: int, accuracy: float, loss: float, model: nn.Module) -> bool:
        """Record an epoch; True when training should stop."""
        score = (accuracy, -loss) if self.mode == "val_accuracy" else (-loss, accuracy)
        if self.best is None or score > self.best:
            self.best, self.best_epoch, self.since_best = score, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience


def resolve_selectors(model: nn.Module, selectors: list[str], heads: list[str]) -> list[str]:
    """Layer selectors with ``head`` standing for the new main head (auxiliary heads train when named or with
    ``*``) and ``*`` for the whole model."""
    if "*" in selectors:
        return [""]
    patterns = [heads[0] if selector == HEAD else selector for selector in selectors]
    return select_layers(model, patterns)


def check_stages(model: nn.Module, heads: list[str], stages: list[StageConfig], where: str) -> None:
    """Every stage's ``train`` and ``lr_groups`` selectors must name layers of the model: checked before any
    training, so a typo in the last stage does not cost the earlier ones."""
    for index, stage in enumerate(stages):
        for key, selectors in [("train", stage.train), *((f"lr_groups.{k}", [k]) for k in stage.lr_groups)]:
            try:
                resolve_selectors(model, selectors, heads)
            except LayerSelectionError as error:
                raise ConfigError(f"`{where}.{index}.{key}` (stage {stage.name}): {error}") from None


def configure_stage(
    model: nn.Module, selectors: list[str], heads: list[str], frozen_batchnorm: str = "fixed"
) -> list[str]:
    """Make exactly the selected layers trainable; freeze (and pin to eval mode) every module outside them."""
    unfreeze(model)
    chosen = resolve_selectors(model, selectors, heads)
    if chosen == [""]:
        return ["*"]
    frozen = _outside(model, chosen)
    freeze_modules(model, frozen)
    if frozen_batchnorm == "update_stats":
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                name == keep or name.startswith(keep + ".") for keep in chosen
            ):
                _split_pinned_ancestors(model, name)
                _unpin_eval(module)
    return chosen


def _outside(model: nn.Module, chosen: list[str]) -> list[str]:
    """Top-most modules containing nothing chosen (walking down only through ancestors of chosen modules).

    Parameters held directly by those ancestors (ViT's class token, position embedding) are frozen here too."""
    result: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for param in module.parameters(recurse=False):
            param.requires_grad_(False)
            param.grad = None
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if name in chosen:
                continue
            if any(keep.startswith(name + ".") for keep in chosen):
                walk(name, child)
            else:
                result.append(name)

    walk("", model)
    return result


def build_stage_optimizer(
    model: nn.Module, stage: StageConfig, training: TrainingConfig, heads: list[str]
) -> torch.optim.Optimizer:
    """One named parameter group per ``lr_groups`` entry (in config order), then ``default`` at the stage's rate:
    a fixed layout, so schedulers and saved optimizer states line up."""
    assigned: set[int] = set()
    groups: list[dict[str, Any]] = []
    for selector, lr in stage.lr_groups.items():
        params = []
        for name in resolve_selectors(model, [selector], heads):
            module = model.get_submodule(name) if name else model
            for param in module.parameters():
                if param.requires_grad and id(param) not in assigned:
                    assigned.add(id(param))
                    params.append(param)
        if not params:
            raise ConfigError(
                f"stage `{stage.name}`: `lr_groups.{selector}` selects no trainable layer. Add the layer to the "
                "stage's `train` list or remove the group."
            )
        groups.append({"params": params, "lr": lr, "name": selector})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in assigned]
    if rest:
        groups.append({"params": rest, "lr": stage.lr, "name": "default"})
    if not groups:
        raise ConfigError(f"stage `{stage.name}`: every parameter is frozen; name layers in `train`.")
    kwargs: dict[str, Any] = {"lr": stage.lr, "weight_decay": training.weight_decay}
    if training.momentum is not None:
        if training.optimizer not in ("sgd", "rmsprop"):
            raise ConfigError("`training.momentum` applies to sgd and rmsprop only.")
        kwargs["momentum"] = training.momentum
    optimizer = optimizer_class(training.optimizer)(groups, **kwargs)
    if training.l1 > 0:
        optimizer.register_step_pre_hook(L1Penalty(training.l1))
    return optimizer


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> Any:
    """The stage's learning-rate schedule, stepped once per epoch (None when constant)."""
    if stage.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=stage.epochs)
    if stage.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, stage.epochs // 3), gamma=0.1)
    return None


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

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.center: CenterLoss | None = None
        self.epoch_seed = self.seed
        self._last_write = time.monotonic()

    def run_stages(
        self, stages: list[StageConfig], train: ImageSet, val: ImageSet, resume: dict[str, Any] | None = None
    ) -> list[StageResult]:
        """Run the stages in order (from a checkpoint's position when ``resume`` is given)."""
        done = [StageResult(**item) for item in resume["stage_results"]] if resume else []
        if resume is not None and resume["stage_epoch"] == 0:  # saved at a stage boundary
            self._center_optimizer()
            self.model.load_state_dict(resume["model"])
            if self.center is not None and resume["center"] is not None:
                self.center.load_state_dict(resume["center"])
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
        started = time.perf_counter()
        done = done or []
        trainable = configure_stage(self.model, stage.train, self.heads, self.frozen_batchnorm)
        trainable_count, frozen_count = count_parameters(self.model)
        optimizer = build_stage_optimizer(self.model, stage, self.training, self.heads)
        scheduler = build_scheduler(optimizer, stage)
        centers = self._center_optimizer()
        monitor = Monitor(stage.monitor, stage.patience)
        first_epoch = 1
        if resume is not None and resume["stage_epoch"] > 0:
            first_epoch = resume["stage_epoch"] + 1
            self._restore(resume, optimizer, scheduler, monitor)
        cached = self._use_cache(trainable)
        if cached:
            train_loader, val_loader = self._feature_loaders(train, val)
        else:
            train_loader, val_loader = self._image_loaders(train, val)
        self.log(
            f"{self.label} stage {stage.name}: training {', '.join(trainable)} ({trainable_count:,} parameters, "
            f"{frozen_count:,} frozen){'; trunk features cached' if cached else ''}"
            + (f"; resumed after epoch {first_epoch - 1}" if first_epoch > 1 else "")
        )
        stopped = False
        bar = tqdm(
            total=stage.epochs,
            initial=first_epoch - 1,
            desc=f"{self.label}/{stage.name}",
            unit="epoch",
            disable=not self.progress,
            leave=False,
        )
        stage_epoch = first_epoch - 1
        for stage_epoch in range(first_epoch, stage.epochs + 1):
            self.epoch_seed = self.seed * 100_003 + self.epoch
            train_loss, train_acc = self._train_epoch(train_loader, optimizer, centers, cached, stage.name)
            val_loss, val_acc = self.evaluate(val_loader, cached)
            self.epoch += 1
            self._log_epoch(optimizer, train_loss, train_acc, val_loss, val_acc)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
            if scheduler is not None:
                scheduler.step()
            check_finite(self.model, f"{self.label} stage {stage.name}, epoch {stage_epoch}", stage.lr)
            if monitor.update(stage_epoch, val_acc, val_loss, self.model):
                stopped = stage_epoch < stage.epochs
                break
            if stage_epoch < stage.epochs:
                self._checkpoint_if_due(
                    lambda epoch=stage_epoch: self._snapshot(
                        index, epoch, done, optimizer, scheduler, monitor
                    ),
                    stage.name,
                )
        bar.close()
        assert monitor.best_state is not None and monitor.best is not None
        self.model.load_state_dict(monitor.best_state)
        best_acc, best_loss = (
            (monitor.best[0], -monitor.best[1])
            if stage.monitor == "val_accuracy"
            else (monitor.best[1], -monitor.best[0])
        )
        self.log(
            f"{self.label} stage {stage.name}: best epoch {monitor.best_epoch} of {stage_epoch} (val accuracy "
            f"{best_acc:.3f}, loss {best_loss:.3f}){', stopped early' if stopped else ''}; its weights are restored"
        )
        result = StageResult(
            stage.name,
            stage_epoch,
            monitor.best_epoch,
            best_acc,
            best_loss,
            trainable,
            trainable_count,
            frozen_count,
            cached,
            stopped,
            time.perf_counter() - started,
        )
        # a stage boundary is always saved: the next stage starts from the restored best weights
        self._checkpoint_if_due(
            lambda: self._snapshot(index + 1, 0, [*done, result], None, None, None), stage.name, force=True
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
        self,
        stage_index: int,
        stage_epoch: int,
        done: list[StageResult],
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        monitor: Monitor | None,
    ) -> dict[str, Any]:
        """Everything needed to continue exactly here: weights, optimizer, schedule, early stopping, RNG."""
        return {
            "stage_index": stage_index,
            "stage_epoch": stage_epoch,
            "epoch": self.epoch,
            "stage_results": [asdict(result) for result in done],
            "model": cpu_copy(self.model.state_dict()),
            "optimizer": cpu_copy(optimizer.state_dict()) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "monitor": None
            if monitor is None
            else {
                "best": list(monitor.best) if monitor.best is not None else None,
                "best_epoch": monitor.best_epoch,
                "since_best": monitor.since_best,
                "best_state": cpu_copy(monitor.best_state),
            },
            "center": cpu_copy(self.center.state_dict()) if self.center is not None else None,
            "rng": rng_state(),
        }

    def _restore(
        self, state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, monitor: Monitor
    ) -> None:
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        saved = state["monitor"]
        monitor.best = tuple(saved["best"]) if saved["best"] is not None else None
        monitor.best_epoch, monitor.since_best = saved["best_epoch"], saved["since_best"]
        monitor.best_state = saved["best_state"]
        if self.center is not None and state["center"] is not None:
            self.center.load_state_dict(state["center"])
        self.epoch = state["epoch"]
        set_rng_state(state["rng"])

    def _use_cache(self, trainable: list[str]) -> bool:
        head = self.heads[0]
        if self.cache_mode == "off" or trainable != [head]:
            return False
        if self.frozen_batchnorm == "update_stats":
            return False  # the trunk's statistics change while training: its outputs are not fixed
        return not self.augmenting or self.cache_mode in ("memory", "disk")

    def _feature_loaders(self, train: ImageSet, val: ImageSet) -> tuple[DataLoader, DataLoader]:
        plain_train = train.with_transform(val.transform) if val.transform is not None else train
        loaders = []
        for images, shuffle in ((plain_train, True), (val, False)):
            features, labels = self.cache.features(
                self.model, self.heads, self.prep, images, self.device, max(self.batch_size, 64), self.workers
            )
            loaders.append(
                DataLoader(
                    TensorDataset(features, labels),
                    batch_size=self.batch_size,
                    sampler=EpochShuffle(len(labels), self) if shuffle else None,
                    generator=torch.Generator(),
                )
            )
        return loaders[0], loaders[1]

    def _image_loaders(self, train: ImageSet, val: ImageSet) -> tuple[DataLoader, DataLoader]:
        return (
            DataLoader(
                train,
                self.batch_size,
                sampler=EpochShuffle(len(train), self),
                num_workers=self.workers,
                generator=torch.Generator(),
            ),
            DataLoader(val, max(self.batch_size, 64), num_workers=self.workers, generator=torch.Generator()),
        )

    def _center_optimizer(self) -> torch.optim.Optimizer | None:
        if self.training.center_loss <= 0:
            return None
        if self.center is None:
            dim = self._head_linear().in_features
            self.center = CenterLoss(self.num_classes, dim).to(self.device)
        return torch.optim.SGD(self.center.parameters(), lr=self.training.center_lr)

    def _head_linear(self) -> nn.Linear:
        head = self.model.get_submodule(self.heads[0])
        return head if isinstance(head, nn.Linear) else head.linear  # type: ignore[return-value]

    def _forward(
        self, inputs: torch.Tensor, cached: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """(logits, trainable auxiliary logits, head-input features when center loss needs them)."""
        head = self.model.get_submodule(self.heads[0])
        if cached:
            return head(inputs), [], inputs
        captured: list[torch.Tensor] = []
        handle = None
        if self.center is not None:
            handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            logits, aux = split_outputs(self.model(inputs))
        finally:
            if handle is not None:
                handle.remove()
        trainable_aux = [
            out
            for name, out in zip(self.heads[1:], aux, strict=False)
            if any(p.requires_grad for p in self.model.get_submodule(name).parameters())
        ]
        return logits, trainable_aux, captured[0] if captured else None

    def _train_epoch(
        self,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        centers: torch.optim.Optimizer | None,
        cached: bool,
        stage: str = "",
    ) -> tuple[float, float]:
        self.model.train()
        criterion = nn.CrossEntropyLoss(label_smoothing=self.training.label_smoothing)
        total_loss = correct = count = 0.0
        for batch, (inputs, labels) in enumerate(loader):
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            logits, aux, features = self._forward(inputs, cached)
            loss = criterion(logits, labels)
            for name, out in zip(self.heads[1:], aux, strict=False):
                loss = loss + AUX_LOSS_WEIGHT.get(name, 0.3) * criterion(out, labels)
            if self.center is not None and features is not None:
                loss = loss + self.training.center_loss * self.center(features.flatten(1), labels)
            optimizer.zero_grad(set_to_none=True)
            if centers is not None:
                centers.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise NumericalError(
                    f"{self.label} stage {stage}: the loss became {loss.item()} in epoch {self.epoch + 1}, batch "
                    f"{batch + 1}. Likely causes: a learning rate too high for this stage (lower `lr` or "
                    "`lr_groups`), or broken inputs (check the images and `data.normalize`). The last good "
                    "checkpoint is kept; fix the config and rerun."
                )
            loss.backward()
            optimizer.step()
            if centers is not None:
                centers.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += len(labels)
        return total_loss / count, correct / count

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, cached: bool = False) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the model in eval mode."""
        self.model.eval()
        total_loss = correct = count = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            logits = self._logits(inputs, cached)
            total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += len(labels)
        return total_loss / count, correct / count

    def _logits(self, inputs: torch.Tensor, cached: bool) -> torch.Tensor:
        if cached:
            return self.model.get_submodule(self.heads[0])(inputs)
        return split_outputs(self.model(inputs))[0]

    @torch.no_grad()
    def predictions(self, images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, true labels) over a data set."""
        self.model.eval()
        predicted, truth = [], []
        loader = DataLoader(
            images, max(self.batch_size, 64), num_workers=self.workers, generator=torch.Generator()
        )
        for inputs, labels in loader:
            predicted.append(self._logits(inputs.to(self.device), False).argmax(dim=1).cpu())
            truth.append(labels)
        return torch.cat(predicted), torch.cat(truth)

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


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A fresh permutation each epoch from (seed, epoch): shuffling never depends on how the run got there, so a
    resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, size: int, trainer: Trainer) -> None:
        self.size = size
        self.trainer = trainer

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.trainer.epoch_seed)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class StopForSignal(Exception):
    """Raised after the checkpoint was written because Ctrl-C or SIGTERM asked to stop."""

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(detail)
        self.signum = signum
        self.detail = detail


def check_finite(model: nn.Module, where: str, lr: float) -> None:
    """Stop with a clear error when a trainable parameter holds NaN or infinity."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise NumericalError(
                f"{where}: parameter {name} became NaN or infinite. Likely cause: the learning rate ({lr:g}) is too "
                "high for this stage. The last good checkpoint is kept; lower `lr` and rerun."
            )
