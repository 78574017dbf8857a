"""Bottleneck features: the frozen trunk's outputs computed once and reused, in memory or on disk.

A cache entry is keyed by the trunk's weights, the preprocessing and the images themselves, so a changed model or
data set is never served stale features."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from rltransfer.core.io import atomic_path
from rltransfer.vision.data import ImageSet, Preprocessing

CACHE_VERSION = "1"


def trunk_digest(model: nn.Module, heads: Sequence[str]) -> str:
    """A digest of every parameter and buffer outside the heads (what the cached features depend on)."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for key, tensor in model.state_dict().items():
        if any(key.startswith(head + ".") for head in heads):
            continue
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model: nn.Module, heads: Sequence[str], prep: Preprocessing, images: ImageSet) -> str:
    """The key of ``images``' features under this trunk (everything but ``heads``) and preprocessing."""
    digest = hashlib.sha256()
    for part in (trunk_digest(model, heads), prep.describe(), images.fingerprint()):
        digest.update(part.encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def compute_features(
    model: nn.Module, head: str, images: ImageSet, device: str, batch_size: int = 64, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels): the input of the head module for every image, with the model in eval mode."""
    head_module = model.get_submodule(head)
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().to("cpu"))

    handle = head_module.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    labels = []
    try:
        # a private generator: computing features (a cache miss) leaves the global random stream untouched
        loader = DataLoader(images, batch_size=batch_size, num_workers=workers, generator=torch.Generator())
        for batch, target in loader:
            model(batch.to(device))
            labels.append(target)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured), torch.cat(labels)


@dataclass
class FeatureCache:
    """Bottleneck features by key: always held in memory for this process, and on disk when ``folder`` is set."""

    folder: Path | None = None
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def features(
        self,
        model: nn.Module,
        heads: Sequence[str],
        prep: Preprocessing,
        images: ImageSet,
        device: str,
        batch_size: int = 64,
        workers: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The features of ``images`` at the input of ``heads[0]``, computed and stored on a miss (the other
        heads, e.g. auxiliary ones, are left out of the key: they do not feed the main head)."""
        key = cache_key(model, heads, prep, images)
        found = self.entries.get(key) or self._read(key)
        if found is not None:
            self.hits += 1
            self.entries[key] = found
            return found
        self.misses += 1
        found = compute_features(model, heads[0], images, device, batch_size, workers)
        self.entries[key] = found
        self._write(key, found)
        return found

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"features-{key}.pt"

    def _read(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            features, labels = saved["features"], saved["labels"]
            if saved.get("key") != key or len(features) != len(labels):
                raise ValueError("key or length mismatch")
            return features, labels
        except Exception:  # a damaged cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None

    def _write(self, key: str, found: tuple[torch.Tensor, torch.Tensor]) -> None:
        path = self.path(key)
        if path is None:
            return
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"key": key, "features": found[0], "labels": found[1]}, tmp)

    def files(self) -> Iterable[Path]:
        return [] if self.folder is None else sorted(self.folder.glob("features-*.pt"))
