"""Supervised image transfer on the same freeze / replace-head core: torchvision models, image folders, staged
training with early stopping, bottleneck caching, reports. Needs the ``vision`` extra (torchvision)."""

from __future__ import annotations

from rltransfer.vision.config import ImageConfig
from rltransfer.vision.models import (
    SMALL_CNN,
    TESTED_ARCHITECTURES,
    ModelSpec,
    SmallConvNet,
    TwoTrunks,
    build_architecture,
    build_classifier,
    list_architectures,
    load_classifier,
    set_classes,
)
from rltransfer.vision.pipeline import ImageResult, predict, run_image

__all__ = [
    "SMALL_CNN",
    "TESTED_ARCHITECTURES",
    "ImageConfig",
    "ImageResult",
    "ModelSpec",
    "SmallConvNet",
    "TwoTrunks",
    "build_architecture",
    "build_classifier",
    "list_architectures",
    "load_classifier",
    "predict",
    "run_image",
    "set_classes",
]
