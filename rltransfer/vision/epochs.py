"""One epoch of image training or evaluation: data loaders (images, or cached trunk features), the forward pass
with auxiliary heads and center loss, and a shuffle that depends only on (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rltransfer.core.errors import NumericalError
from rltransfer.vision.cache import FeatureCache
from rltransfer.vision.config import TrainingConfig
from rltransfer.vision.data import ImageSet, Preprocessing
from rltransfer.vision.models import AUX_LOSS_WEIGHT, split_outputs
from rltransfer.vision.stages import CenterLoss


@dataclass
class EpochLoop:
    """Runs epochs of one model: its heads (main first), device, batches, and the center loss when asked for."""

    model: nn.Module
    heads: list[str]
    num_classes: int
    training: TrainingConfig
    device: str
    prep: Preprocessing
    batch_size: int
    workers: int = 0
    cache: FeatureCache = field(default_factory=FeatureCache)
    label: str = "train"
    epoch_seed: int = 0
    """Seed of the current epoch's shuffle (set by the trainer before each epoch)."""
    center: CenterLoss | None = None

    def center_optimizer(self) -> torch.optim.Optimizer | None:
        """The center loss's own optimizer (creating the centers on first use), or None without center loss."""
        if self.training.center_loss <= 0:
            return None
        if self.center is None:
            dim = self._head_linear().in_features
            self.center = CenterLoss(self.num_classes, dim).to(self.device)
        return torch.optim.SGD(self.center.parameters(), lr=self.training.center_lr)

    def _head_linear(self) -> nn.Linear:
        head = self.model.get_submodule(self.heads[0])
        return head if isinstance(head, nn.Linear) else head.linear  # type: ignore[return-value]

    def feature_loaders(self, train: ImageSet, val: ImageSet) -> tuple[DataLoader, DataLoader]:
        """Loaders over the frozen trunk's outputs (computed once, from un-augmented images)."""
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

    def image_loaders(self, train: ImageSet, val: ImageSet) -> tuple[DataLoader, DataLoader]:
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

    def _loss(
        self, criterion: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, cached: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, aux, features = self._forward(inputs, cached)
        loss = criterion(logits, labels)
        for name, out in zip(self.heads[1:], aux, strict=False):
            loss = loss + AUX_LOSS_WEIGHT.get(name, 0.3) * criterion(out, labels)
        if self.center is not None and features is not None:
            loss = loss + self.training.center_loss * self.center(features.flatten(1), labels)
        return loss, logits

    def train_epoch(
        self,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        centers: torch.optim.Optimizer | None,
        cached: bool,
        stage: str,
        epoch: int,
    ) -> tuple[float, float]:
        """(mean training loss, training accuracy) of one pass; `stage` and `epoch` (1-based) name it in errors."""
        self.model.train()
        criterion = nn.CrossEntropyLoss(label_smoothing=self.training.label_smoothing)
        total_loss = correct = count = 0.0
        for batch, (inputs, labels) in enumerate(loader):
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            loss, logits = self._loss(criterion, inputs, labels, cached)
            optimizer.zero_grad(set_to_none=True)
            if centers is not None:
                centers.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise NumericalError(
                    f"{self.label} stage {stage}: the loss became {loss.item()} in epoch {epoch}, batch "
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


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A fresh permutation each epoch from (seed, epoch): shuffling never depends on how the run got there, so a
    resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, size: int, loop: EpochLoop) -> None:
        self.size = size
        self.loop = loop

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.loop.epoch_seed)
        return iter(torch.randperm(self.size, generator=generator).tolist())
