"""Image folders: every bad input is one clear error naming the file or item; splits are stratified and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")

from PIL import Image  # noqa: E402

from rltransfer.core.config import parse_config  # noqa: E402
from rltransfer.core.errors import ConfigError  # noqa: E402
from rltransfer.vision.config import DataConfig, ImageConfig  # noqa: E402
from rltransfer.vision.data import DataError, load_task, scan_folder, stratified_split  # noqa: E402
from rltransfer.vision.pipeline import run_image  # noqa: E402


def make_folder(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: random colour images, a different mean brightness per class."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(rng.normal(60 + 60 * index, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def folder_config(tmp_path: Path, **data: object) -> ImageConfig:
    return parse_config(
        {
            "name": "bad",
            "log_root": str(tmp_path / "runs"),
            "device": "cpu",
            "model": {"arch": "small_cnn"},
            "data": {"image_size": 12, "channels": 3, **data},
            "stages": [{"name": "head", "epochs": 1}],
            "baseline": {"enabled": False},
        },
        ImageConfig,
    )


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = [0] * 30 + [1] * 10 + [2] * 20
    train, val = stratified_split(labels, 0.2, seed=3)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(60))
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [6, 2, 4]
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)


def test_folder_task_with_test_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    make_folder(tmp_path / "test", {"cat": 3, "dog": 3}, seed=1)
    data = DataConfig(
        folder=str(tmp_path / "train"),
        test_folder=str(tmp_path / "test"),
        image_size=16,
        val_fraction=0.3,
        augment={"crop_scale": [0.5, 1.0], "hflip": True, "brightness": 0.2},
    )
    task = load_task(data, "small_cnn", seed=0)
    assert task.classes == ["cat", "dog"]
    assert (len(task.train), len(task.val), len(task.test)) == (14, 6, 6)
    image, label = task.train[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)


BAD_INPUTS = {
    "empty class": ("Class folder .*dog holds no usable image", lambda root: (root / "dog").mkdir()),
    "non-image file": (
        r"notes\.txt is not an image",
        lambda root: (root / "cat" / "notes.txt").write_text("hi"),
    ),
    "corrupt image": (
        r"broken\.png is corrupt or truncated.*skip_corrupt",
        lambda root: (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_folders_are_clear_errors_and_write_nothing(tmp_path: Path, case: str) -> None:
    message, spoil = BAD_INPUTS[case]
    root = make_folder(
        tmp_path / "data", {"cat": 4, "dog": 4} if case != "empty class" else {"cat": 4, "bird": 4}
    )
    spoil(root)
    config = folder_config(tmp_path, folder=str(root))
    with pytest.raises(DataError, match=message):
        run_image(config, progress=False, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # checked before anything is written


def test_corrupt_images_can_be_skipped_with_a_warning(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    (root / "cat" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"Skipping corrupt image .*broken\.png"):
        classes, files, labels = scan_folder(root, skip_corrupt=True)
    assert len(files) == 8 and classes == ["cat", "dog"]


def test_single_class_and_missing_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 4})
    with pytest.raises(DataError, match=r"1 class folder\(s\) \(cat\).*at least two"):
        scan_folder(root)
    with pytest.raises(DataError, match="is not a folder"):
        scan_folder(tmp_path / "nowhere")


def test_class_mismatch_between_train_and_test(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"cat": 4, "dog": 4})
    make_folder(tmp_path / "test", {"cat": 2, "cow": 2})
    data = DataConfig(folder=str(tmp_path / "train"), test_folder=str(tmp_path / "test"))
    with pytest.raises(DataError, match=r"only in training \['dog'\], only in test \['cow'\]"):
        load_task(data, "small_cnn", seed=0)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`data` is invalid: give exactly one of `folder`"):
        folder_config(tmp_path)
    with pytest.raises(ConfigError, match=r"`data.val_fraction` is invalid"):
        folder_config(tmp_path, folder="x", val_fraction=0.5)
    with pytest.raises(
        ConfigError, match=r"`data.augment.hflipp` is not a known setting \(did you mean `hflip`"
    ):
        folder_config(tmp_path, folder="x", augment={"hflipp": True})
    with pytest.raises(ConfigError, match="saturation and hue jitter need colour images"):
        load_task(DataConfig(digits={"classes": [1, 2]}, augment={"saturation": 0.2}), "small_cnn", 0)


def test_a_16_bit_greyscale_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from rltransfer.vision.data import open_image

    levels = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(levels).save(tmp_path / "deep.png")
    grey = np.asarray(open_image(tmp_path / "deep.png", channels=1))
    assert len(np.unique(grey)) == 256 and grey.min() == 0 and grey.max() == 255


def test_a_float_tiff_keeps_its_grey_levels(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from rltransfer.vision.data import open_image

    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)  # 0 .. 1, as cameras write them
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "white.tif")
    Image.fromarray(np.full((8, 8), 128.0, np.float32)).save(tmp_path / "mid-255.tif")
    grey = np.asarray(open_image(tmp_path / "ramp.tif", channels=1))
    assert len(np.unique(grey)) == 256 and grey.min() == 0 and grey.max() == 255
    assert np.asarray(open_image(tmp_path / "white.tif", channels=3)).min() == 255
    assert set(np.unique(np.asarray(open_image(tmp_path / "mid-255.tif", channels=1)))) == {128}
