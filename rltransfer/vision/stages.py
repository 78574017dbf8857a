"""The stages of image training: which layers train, their optimizer and schedule, early stopping on
validation, and the checks that a stage's settings name real layers and its numbers stay finite."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rltransfer.core.errors import ConfigError, LayerSelectionError, NumericalError
from rltransfer.core.layers import (
    freeze_modules,
    select_layers,
    split_pinned_ancestors,
    unfreeze,
    unpin_eval,
)
from rltransfer.core.optim import L1Penalty, SourcePenalty, optimizer_class
from rltransfer.vision.config import StageConfig, TrainingConfig

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
                split_pinned_ancestors(model, name)
                unpin_eval(module)
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
    model: nn.Module,
    stage: StageConfig,
    training: TrainingConfig,
    heads: list[str],
    anchors: dict[str, torch.Tensor] | None = None,
) -> torch.optim.Optimizer:
    """One named parameter group per ``lr_groups`` entry (in config order), then ``default`` at the stage's rate:
    a fixed layout, so schedulers and saved optimizer states line up. With `anchors` (parameter name -> the value
    it started from), weight decay pulls those parameters toward their anchors (L2-SP) and the rest toward 0."""
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
    decay = 0.0 if anchors is not None else training.weight_decay  # L2-SP: the penalty hook applies it
    kwargs: dict[str, Any] = {"lr": stage.lr, "weight_decay": decay}
    if training.momentum is not None:
        if training.optimizer not in ("sgd", "rmsprop"):
            raise ConfigError("`training.momentum` applies to sgd and rmsprop only.")
        kwargs["momentum"] = training.momentum
    optimizer = optimizer_class(training.optimizer)(groups, **kwargs)
    if training.l1 > 0:
        optimizer.register_step_pre_hook(L1Penalty(training.l1))
    if anchors is not None:
        pairs = [(param, anchors[name]) for name, param in model.named_parameters() if name in anchors]
        optimizer.register_step_pre_hook(SourcePenalty(pairs, training.weight_decay, training.weight_decay))
    return optimizer


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> Any:
    """The stage's learning-rate schedule, stepped once per epoch (None when constant)."""
    if stage.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=stage.epochs)
    if stage.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, stage.epochs // 3), gamma=0.1)
    return None


def check_finite(model: nn.Module, where: str, lr: float) -> None:
    """Stop with a clear error when a trainable parameter holds NaN or infinity."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise NumericalError(
                f"{where}: parameter {name} became NaN or infinite. Likely cause: the learning rate ({lr:g}) is too "
                "high for this stage. The last good checkpoint is kept; lower `lr` and rerun."
            )
