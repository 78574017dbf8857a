"""The ``rltransfer image`` config: model, data, augmentation, training stages, baseline, cache."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rltransfer.core.config import NAME_MAX, NAME_PATTERN, Section, check_device
from rltransfer.core.optim import OptimizerName


class SecondModelConfig(Section):
    """A second source network whose trunk sits beside the first's (model concatenation): both heads are removed,
    their features concatenated, and one new head reads them."""

    arch: str = "small_cnn"
    """Its architecture, as for ``model.arch``; it sees the task's images as preprocessed for the first model."""
    weights: str
    """Its weights (required: a random trunk would add noise features): an rltransfer image run (or its model/
    folder), a ``.pt``/``.pth`` state dict, or a registry weight name such as ``DEFAULT``."""


class ModelConfig(Section):
    """The network: an architecture, optional starting weights, dropout before the new head, and optionally a
    second source network whose trunk sits beside the first's."""

    arch: str = "small_cnn"
    """``small_cnn`` (built in), a torchvision classification model (resnet18, mobilenet_v3_small, vit_b_16...) or
    a timm model as ``timm/<name>`` (``pip install "rltransfer[timm]"``; its head through timm's own
    ``reset_classifier``)."""
    weights: str | None = None
    """Starting weights: an rltransfer image run (or its model/ folder), a ``.pt``/``.pth`` state dict, or a
    torchvision weight name such as ``DEFAULT`` (downloaded once, needs internet); null: random."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout before the new head (0.2-0.5 is usual)."""
    frozen_batchnorm: Literal["fixed", "update_stats"] = "fixed"
    """Frozen BatchNorm layers: ``fixed`` keeps their statistics and affine parameters (inference mode);
    ``update_stats`` lets running statistics follow the new data while the affine parameters stay frozen."""
    second: SecondModelConfig | None = None
    """Two sources at once: ``{arch: small_cnn, weights: runs/other}`` puts that network's trunk beside this one's,
    their bottleneck features concatenated into one new head (named ``fc``; the trunks are ``first`` and
    ``second``). The scratch baseline is the same two-trunk network from random weights."""


class AugmentConfig(Section):
    """Random training-time changes to the images (torchvision transforms); validation and test are never augmented."""

    crop_scale: tuple[float, float] | None = None
    """RandomResizedCrop area range, e.g. ``[0.8, 1.0]``; null: no random crop."""
    hflip: bool = False
    vflip: bool = False
    rotation: float = Field(0.0, ge=0.0, le=180.0)
    """Random rotation up to this many degrees."""
    brightness: float = Field(0.0, ge=0.0)
    contrast: float = Field(0.0, ge=0.0)
    saturation: float = Field(0.0, ge=0.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 1:
            raise ValueError("crop_scale must be [low, high] with 0 < low <= high <= 1")
        return value

    def active(self) -> bool:
        return bool(
            self.crop_scale
            or self.hflip
            or self.vflip
            or self.rotation
            or self.brightness
            or self.contrast
            or self.saturation
            or self.hue
        )


class DigitsData(Section):
    """scikit-learn's 8x8 handwritten digits (ships inside scikit-learn: no download)."""

    classes: list[int] = Field(..., min_length=2)
    """Digits of this task, e.g. ``[5, 6, 7, 8, 9]``."""
    per_class: int | None = Field(None, ge=2)
    """Labelled images per class for training and validation; the rest of the class is the test set
    (null: every image, split into train/val/test by the fractions)."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each class held out for testing when ``per_class`` is null."""

    @field_validator("classes")
    @classmethod
    def _digits(cls, value: list[int]) -> list[int]:
        if any(digit < 0 or digit > 9 for digit in value) or len(set(value)) != len(value):
            raise ValueError("classes must be distinct digits 0-9")
        return value


class DataConfig(Section):
    """A data set: an image folder (one subfolder per class) or the built-in digits, and its preprocessing."""

    folder: str | None = None
    """Training images: ``folder/<class>/<image>``; a stratified share becomes the validation split."""
    test_folder: str | None = None
    """Optional test images with the same class subfolders."""
    digits: DigitsData | None = None
    val_fraction: float = Field(0.2, ge=0.1, le=0.3)
    """Held-out validation share of each class (stratified, seeded): 0.1-0.3."""
    image_size: int | None = Field(None, ge=8)
    """Side of the square input; default: 224 for folders (299 for inception_v3), 8 for digits."""
    channels: Literal[1, 3] | None = None
    """1 (grey) or 3 (RGB); default: 3 for folders, 1 for digits with the small CNN, else 3."""
    normalize: Literal["imagenet", "none"] | None = None
    """``imagenet`` mean/std (for torchvision weights) or ``none``; default: imagenet for torchvision
    architectures, none for the small CNN."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    batch_size: int = Field(32, ge=1)
    skip_corrupt: bool = False
    """Skip unreadable images with a warning instead of stopping with an error."""
    workers: int = Field(0, ge=0)
    """DataLoader worker processes."""

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.folder is None) == (self.digits is None):
            raise ValueError(
                "give exactly one of `folder` (an image folder) or `digits` (the built-in demo data)"
            )
        if self.test_folder is not None and self.folder is None:
            raise ValueError("`test_folder` needs `folder`")
        return self


class StageConfig(Section):
    """One training stage: which layers train, for how long, at which learning rates."""

    name: str = Field(..., max_length=NAME_MAX, pattern=NAME_PATTERN)
    train: list[str] = Field(default_factory=lambda: ["head"])
    """Layers that train (names, globs, ``up_to:NAME``; ``head`` is the new head, ``*`` everything); the rest
    is frozen."""
    epochs: int = Field(10, ge=1)
    """Maximum epochs (early stopping may end the stage sooner)."""
    lr: float = Field(1e-3, gt=0.0)
    lr_groups: dict[str, float] = Field(default_factory=dict)
    """Learning rates for layer groups, e.g. ``{layer3: 0.0001}``: earlier blocks often get smaller ones."""
    schedule: Literal["constant", "cosine", "step"] = "constant"
    """Learning-rate schedule over the stage's epochs (``step``: x0.1 every third of the stage)."""
    patience: int | None = Field(5, ge=1)
    """Stop after this many epochs without a better validation score (null: run every epoch)."""
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    """Early-stopping score; the best epoch's weights are restored when the stage ends."""


class TrainingConfig(Section):
    """Optimizer and loss settings shared by every stage."""

    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 penalty (decoupled for AdamW); with ``decay_to: source``, the L2-SP strength."""
    decay_to: Literal["zero", "source"] = "zero"
    """``source``: in the transfer phase, weight decay pulls every weight the network started from (the source
    phase's, the pretrained or the given ones) toward those values instead of toward zero (L2-SP); the new heads
    and the source and scratch phases keep plain L2 of the same strength."""
    l1: float = Field(0.0, ge=0.0)
    """L1 penalty on weight matrices."""
    momentum: float | None = Field(None, ge=0.0)
    """SGD/RMSprop momentum."""
    center_loss: float = Field(0.0, ge=0.0)
    """Weight of the center loss (Wen et al. 2016) beside cross-entropy; helps very small data sets. 0: off."""
    center_lr: float = Field(0.5, gt=0.0)
    """Learning rate of the class centers."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _l2sp_needs_a_strength(self) -> TrainingConfig:
        if self.decay_to == "source" and self.weight_decay == 0:
            raise ValueError(
                "`decay_to: source` pulls the weights toward their starting values with strength `weight_decay`, "
                "which is 0 here, so it would do nothing; set a strength (e.g. weight_decay: 0.01) or remove decay_to"
            )
        return self


class SourceStageConfig(Section):
    """Optional stage (a): train the network on a source data set before transferring it."""

    data: DataConfig
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name="source", train=["*"], epochs=20)], min_length=1
    )


class BaselineConfig(Section):
    """The control: the same architecture trained from random weights on the same labels."""

    enabled: bool = True
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name="scratch", train=["*"], epochs=30, patience=10)],
        min_length=1,
    )


class ImageConfig(Section):
    """``rltransfer image``: (a) optionally train a source network, (b) transfer it to the target data in stages,
    then compare with a network trained from scratch on the same labels."""

    name: str = Field(..., min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    log_root: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    source: SourceStageConfig | None = None
    data: DataConfig
    """The target data set."""
    stages: list[StageConfig] = Field(
        default_factory=lambda: [
            StageConfig(name="head", train=["head"], epochs=20),
            StageConfig(name="finetune", train=["*"], epochs=10, lr=1e-4),
        ],
        min_length=1,
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    """Bottleneck features for head-only stages: ``auto`` caches in memory when the trunk is frozen and no
    augmentation changes its input; ``memory``/``disk`` also cache when augmenting (on un-augmented images);
    ``off`` always recomputes the trunk."""
    checkpoint_seconds: float = Field(60.0, ge=0.0)
    """Save a resumable checkpoint (checkpoint.pt) at most this often, at epoch ends; stage ends and Ctrl-C /
    SIGTERM always save one. 0: after every epoch."""
    cache_dir: str = ".rltransfer-cache"
    """Folder of the disk cache (files are keyed by trunk weights, preprocessing and data)."""

    _known_device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _unique_stage_names(self) -> ImageConfig:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be distinct, got {names}")
        return self
