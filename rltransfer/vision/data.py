"""Image data for transfer: class folders checked file by file, seeded stratified splits, the offline digits
task, and torchvision transforms for preprocessing and augmentation."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rltransfer.core.errors import ConfigError
from rltransfer.vision.config import AugmentConfig, DataConfig
from rltransfer.vision.models import MIN_INPUT, SMALL_CNN, require_torchvision

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_SIZE = 8


class DataError(ConfigError):
    """A data set cannot be used as given (empty class, unreadable image, mismatched classes...)."""


@dataclass(frozen=True)
class Preprocessing:
    """How images become network inputs: size, channels and normalisation (part of every cache key)."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        return f"size={self.image_size} channels={self.channels} mean={self.mean} std={self.std}"


def preprocessing_for(data: DataConfig, arch: str) -> Preprocessing:
    """Fill in the data config's defaults for this architecture."""
    digits = data.digits is not None
    channels = data.channels or (1 if digits and arch == SMALL_CNN else 3)
    size = data.image_size or (DIGITS_SIZE if digits and arch == SMALL_CNN else 224)
    size = max(size, MIN_INPUT.get(arch, 0)) if data.image_size is None else size
    if size < MIN_INPUT.get(arch, 0):
        raise ConfigError(
            f"`data.image_size`: {arch} needs inputs of at least {MIN_INPUT[arch]} pixels, got {size}."
        )
    normalize = data.normalize or ("none" if arch == SMALL_CNN else "imagenet")
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN[:channels], IMAGENET_STD[:channels]
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    if channels == 1 and (data.augment.saturation or data.augment.hue):
        raise ConfigError(
            "`data.augment`: saturation and hue jitter need colour images; set `data.channels: 3`."
        )
    return Preprocessing(size, channels, tuple(mean), tuple(std))


def build_transform(
    prep: Preprocessing, augment: AugmentConfig | None = None
) -> Callable[[Any], torch.Tensor]:
    """torchvision v2 transforms: resize (or a random resized crop), the ``augment`` steps when given, then float
    conversion, channel count and normalisation."""
    require_torchvision()
    from torchvision.transforms import v2

    augment = augment if augment is not None and augment.active() else None
    steps: list[Any] = [v2.ToImage()]
    if augment is not None and augment.crop_scale:
        steps.append(v2.RandomResizedCrop(prep.image_size, scale=augment.crop_scale, antialias=True))
    else:
        steps.append(v2.Resize((prep.image_size, prep.image_size), antialias=True))
    if augment is not None:
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.rotation:
            steps.append(v2.RandomRotation(augment.rotation))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment is not None and (augment.brightness or augment.contrast or augment.saturation or augment.hue):
        steps.append(
            v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue or None)
        )
    steps.append(_Channels(prep.channels))
    steps.append(v2.Normalize(prep.mean, prep.std))
    return v2.Compose(steps)


class _Channels(torch.nn.Module):
    """Grey images repeated to three channels (or RGB averaged to one), so any data set fits the network."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3] == self.channels:
            return image
        if self.channels == 3:
            return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
        return image.mean(dim=-3, keepdim=True)


class ImageSet(Dataset):
    """Images (file paths or tensors) with integer labels, passed through a transform on access."""

    def __init__(
        self,
        items: Sequence[Path] | torch.Tensor,
        labels: Sequence[int],
        transform: Callable[[Any], torch.Tensor] | None = None,
        channels: int = 3,
    ) -> None:
        self.items = items
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def with_transform(self, transform: Callable[[Any], torch.Tensor]) -> ImageSet:
        return ImageSet(self.items, self.labels.tolist(), transform, self.channels)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        if isinstance(self.items, torch.Tensor):
            items: Sequence[Path] | torch.Tensor = self.items[
                torch.as_tensor(list(indices), dtype=torch.long)
            ]
        else:
            items = [self.items[i] for i in indices]
        labels = [int(self.labels[i]) for i in indices]
        return ImageSet(items, labels, self.transform, self.channels)

    def raw(self, index: int) -> Any:
        if isinstance(self.items, torch.Tensor):
            return self.items[index]
        return open_image(self.items[index], self.channels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.raw(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def fingerprint(self) -> str:
        """A digest of the images' contents and labels, in order (renaming, editing or re-labelling changes it)."""
        digest = hashlib.sha256()
        if isinstance(self.items, torch.Tensor):
            digest.update(self.items.detach().cpu().contiguous().numpy().tobytes())
        else:
            for path in self.items:
                digest.update(str(path).encode())
                digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


def _eight_bit(image: Any) -> Any:
    """16-bit and 32-bit integer greyscale scaled to 0-255 (PIL's own conversion clips them to two values), and
    32-bit float greyscale (mode F) read as 0-1 when it stays within it, else as 0-255, else scaled to its
    maximum (PIL's own conversion would clip 0-1 values to black)."""
    from PIL import Image

    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(values.max(initial=0))
        top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else peak
        return Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) <= 65535 else float(values.max())
    return Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")


def open_image(path: Path, channels: int = 3) -> Any:
    """A PIL image in RGB (or L for one channel); an unreadable file raises a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _eight_bit(image).convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"Image {path} is corrupt or truncated ({error}). Replace or delete it, or set "
            "`data.skip_corrupt: true` to skip unreadable images with a warning."
        ) from None


@dataclass
class TaskData:
    """A classification task split into train / validation / (optional) test sets, plus its class names."""

    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    preprocessing: Preprocessing


def load_task(data: DataConfig, arch: str, seed: int, where: str = "data") -> TaskData:
    """Read, check and split a data config; transforms are attached (augmentation on the train set only)."""
    prep = preprocessing_for(data, arch)
    if data.digits is not None:
        classes, train, val, test = _digits(data, seed)
    else:
        classes, train, val, test = _folders(data, prep.channels, seed, where)
    train_tf, eval_tf = build_transform(prep, data.augment), build_transform(prep)
    return TaskData(
        classes,
        train.with_transform(train_tf),
        val.with_transform(eval_tf),
        test.with_transform(eval_tf) if test is not None else None,
        prep,
    )


def _folders(
    data: DataConfig, channels: int, seed: int, where: str
) -> tuple[list[str], ImageSet, ImageSet, ImageSet | None]:
    assert data.folder is not None
    classes, files, labels = scan_folder(Path(data.folder), data.skip_corrupt, f"{where}.folder")
    full = ImageSet(files, labels, channels=channels)
    train_idx, val_idx = stratified_split(labels, data.val_fraction, seed, data.folder)
    test = None
    if data.test_folder is not None:
        test_classes, test_files, test_labels = scan_folder(
            Path(data.test_folder), data.skip_corrupt, f"{where}.test_folder"
        )
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DataError(
                f"The classes of {data.test_folder} do not match those of {data.folder}: only in training "
                f"{only_train or 'none'}, only in test {only_test or 'none'}. Both folders need the same class "
                "subfolders."
            )
        test = ImageSet(test_files, test_labels, channels=channels)
    return classes, full.subset(train_idx), full.subset(val_idx), test


def scan_folder(
    folder: Path, skip_corrupt: bool = False, where: str = "data.folder"
) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted subfolder names), image files and labels of ``folder/<class>/<image>``; every file is
    opened once so a corrupt one is reported (or skipped) now, not hours into training."""
    if not folder.is_dir():
        raise DataError(f"`{where}`: {folder} is not a folder. Give a folder with one subfolder per class.")
    classes = sorted(
        entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    stray = sorted(
        entry.name for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")
    )
    if len(classes) < 2:
        raise DataError(
            f"`{where}`: {folder} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); a classifier "
            "needs at least two. Put each class's images in its own subfolder: folder/<class>/<image>."
            + (f" Files found directly in the folder: {', '.join(stray[:5])}." if stray else "")
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = 0
        for path in sorted((folder / name).rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{path} is not an image (extension {path.suffix or 'none'}; accepted: "
                    f"{', '.join(IMAGE_EXTENSIONS)}). Move it out of the class folder."
                )
            if not _readable(path, skip_corrupt):
                continue
            files.append(path)
            labels.append(label)
            found += 1
        if found == 0:
            raise DataError(
                f"Class folder {folder / name} holds no usable image. Add images or remove the folder."
            )
    return classes, files, labels


def _readable(path: Path, skip_corrupt: bool) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # a full decode: verify() alone misses truncated JPEGs
        return True
    except Exception as error:  # PIL raises many types for damaged files
        if not skip_corrupt:
            raise DataError(
                f"Image {path} is corrupt or truncated ({type(error).__name__}: {error}). Replace or delete it, "
                "or set `data.skip_corrupt: true` to skip unreadable images with a warning."
            ) from None
        warnings.warn(f"Skipping corrupt image {path}: {error}", stacklevel=2)
        return False


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int, where: str = "data"
) -> tuple[list[int], list[int]]:
    """Seeded split keeping each class's share: (train indices, validation indices), each class >= 1 in both."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(labels_array):
        members = np.flatnonzero(labels_array == label)
        if len(members) < 2:
            raise DataError(
                f"{where}: class {int(label)} has {len(members)} image; each class needs at least 2 so that one "
                "can be held out for validation. Add images."
            )
        members = rng.permutation(members)
        n_val = min(max(1, round(len(members) * fraction)), len(members) - 1)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return sorted(train), sorted(val)


def _digits(data: DataConfig, seed: int) -> tuple[list[str], ImageSet, ImageSet, ImageSet]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "The digits demo needs scikit-learn (its images ship inside it): pip install 'rltransfer[vision]'."
        ) from None
    assert data.digits is not None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    targets = np.asarray(bunch.target)
    rng = np.random.default_rng(seed)
    labelled: list[int] = []
    test: list[int] = []
    labels: dict[int, int] = {}
    for label, digit in enumerate(data.digits.classes):
        members = rng.permutation(np.flatnonzero(targets == digit))
        count = data.digits.per_class or len(members) - round(len(members) * data.digits.test_fraction)
        if count >= len(members):
            raise DataError(
                f"`data.digits.per_class`: digit {digit} has {len(members)} images, so {count} labelled ones leave "
                f"none for testing. Use at most {len(members) - 1}."
            )
        labelled += members[:count].tolist()
        test += members[count:].tolist()
        labels[digit] = label
    mapped = [labels.get(int(t), -1) for t in targets]  # -1: a digit outside this task, never selected
    full = ImageSet(images, mapped, channels=1)
    pool = full.subset(labelled)
    train_idx, val_idx = stratified_split(pool.labels.tolist(), data.val_fraction, seed, "data.digits")
    names = [str(digit) for digit in data.digits.classes]
    return names, pool.subset(train_idx), pool.subset(val_idx), full.subset(test)
