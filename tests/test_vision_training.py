"""Staged training: the bottleneck cache is reused and invalidated correctly, early stopping restores the best
epoch, the digits demo runs end to end (model, report, TensorBoard, predict) on a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")

from PIL import Image  # noqa: E402

from rltransfer.core.errors import ConfigError  # noqa: E402
from rltransfer.vision import cache as cache_module  # noqa: E402
from rltransfer.vision.cache import FeatureCache  # noqa: E402
from rltransfer.vision.config import DataConfig, ImageConfig, StageConfig, TrainingConfig  # noqa: E402
from rltransfer.vision.data import (  # noqa: E402
    DataError,  # noqa: E402
    load_task,
    preprocessing_for,
)
from rltransfer.vision.models import ModelSpec, build_classifier  # noqa: E402
from rltransfer.vision.pipeline import run_image  # noqa: E402
from rltransfer.vision.trainer import Trainer  # noqa: E402

DIGITS = {"digits": {"classes": [5, 6, 7], "per_class": 10}, "batch_size": 8}


def small_model(classes: int = 3, dropout: float = 0.0) -> tuple[torch.nn.Module, ModelSpec]:
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="small_cnn",
        num_classes=classes,
        classes=[str(i) for i in range(classes)],
        in_channels=1,
        image_size=8,
        dropout=dropout,
    )
    return build_classifier(spec), spec


def trainer_for(model: torch.nn.Module, spec: ModelSpec, cache: FeatureCache, **kwargs: object) -> Trainer:
    data = DataConfig(**DIGITS)
    return Trainer(
        model=model,
        heads=[spec.head],
        num_classes=spec.num_classes,
        training=TrainingConfig(),
        device="cpu",
        prep=preprocessing_for(data, "small_cnn"),
        batch_size=8,
        cache=cache,
        progress=False,
        log=lambda *_: None,
        **kwargs,
    )


def test_cache_reused_from_memory_and_disk_and_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = load_task(DataConfig(**DIGITS), "small_cnn", seed=0)
    model, spec = small_model()
    computed = []
    real = cache_module.compute_features
    monkeypatch.setattr(cache_module, "compute_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    cache = FeatureCache(tmp_path / "cache")
    first = cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    again = cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    assert (cache.misses, cache.hits, len(computed)) == (1, 1, 1) and again[0] is first[0]
    fresh = FeatureCache(tmp_path / "cache")  # a later process: served from disk, trunk not run
    from_disk = fresh.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    assert (fresh.hits, len(computed)) == (1, 1) and torch.equal(from_disk[0], first[0])
    head_only = model.fc.weight.data.add_(1.0)  # the head is not part of the key
    assert fresh.features(model, [spec.head], task.preprocessing, task.val, "cpu")[0] is from_disk[0]
    del head_only
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] += 0.5  # a changed trunk is never served stale features
    changed = fresh.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    assert len(computed) == 2 and not torch.equal(changed[0], first[0])
    other_data = load_task(
        DataConfig(**{**DIGITS, "digits": {"classes": [5, 6, 7], "per_class": 11}}), "small_cnn", 0
    )
    fresh.features(model, [spec.head], task.preprocessing, other_data.val, "cpu")
    assert len(computed) == 3
    bigger = preprocessing_for(DataConfig(**DIGITS, image_size=12), "small_cnn")
    fresh.features(model, [spec.head], bigger, task.val, "cpu")
    assert len(computed) == 4 and len(list(fresh.files())) == 4
    victim = next(iter(fresh.files()))
    victim.write_bytes(victim.read_bytes()[:40])  # a torn file is recomputed, not trusted
    assert FeatureCache(tmp_path / "cache")._read(victim.stem.removeprefix("features-")) is None
    assert not victim.exists()


def test_edited_image_file_invalidates_the_cache(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 30 * i + (100 if name == "b" else 0), np.uint8)).save(
                tmp_path / "data" / name / f"{i}.png"
            )
    data = DataConfig(folder=str(tmp_path / "data"), image_size=8, channels=1)
    model, spec = small_model(classes=2)
    cache = FeatureCache()
    task = load_task(data, "small_cnn", 0)
    cache.features(model, [spec.head], task.preprocessing, task.train, "cpu")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(task.train.items[0])
    cache.features(model, [spec.head], task.preprocessing, load_task(data, "small_cnn", 0).train, "cpu")
    assert (cache.misses, cache.hits) == (2, 0)


def test_head_stage_trains_on_cached_features_and_matches_the_trunk(tmp_path: Path) -> None:
    task = load_task(DataConfig(**DIGITS), "small_cnn", seed=0)
    model, spec = small_model(dropout=0.3)
    trainer = trainer_for(model, spec, FeatureCache(), cache_mode="auto")
    trunk_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    result = trainer.run_stage(StageConfig(name="head", epochs=3, patience=None), task.train, task.val)
    assert result.cached and result.trainable == ["fc"]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trunk_before.items())  # BatchNorm statistics included
    # the cached path scores exactly what the full network scores
    loader = torch.utils.data.DataLoader(task.val, batch_size=64)
    assert trainer.evaluate(loader, cached=False)[1] == pytest.approx(result.best_val_accuracy)


def test_early_stopping_restores_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task(DataConfig(**DIGITS), "small_cnn", seed=0)
    model, spec = small_model()
    trainer = trainer_for(model, spec, FeatureCache(), cache_mode="off")
    scores = iter([(1.0, 0.4), (0.9, 0.8), (0.8, 0.6), (1.0, 0.8), (0.6, 0.7)])  # (loss, accuracy) per epoch
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loader, cached=False: next(scores))
    snapshots = []
    real_epoch = trainer.loop.train_epoch

    def epoch_then_snapshot(*args: object) -> tuple[float, float]:
        out = real_epoch(*args)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(trainer.loop, "train_epoch", epoch_then_snapshot)
    result = trainer.run_stage(
        StageConfig(name="all", train=["*"], epochs=10, patience=2, lr=0.01), task.train, task.val
    )
    # epoch 4 ties epoch 2 on accuracy with a higher loss, so epoch 2 stays best; patience 2 stops at epoch 4
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (2, 4, True)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in model.state_dict().items())


def tiny_digits_config(tmp_path: Path, **extra: object) -> ImageConfig:
    from rltransfer.core.config import load_config, resolve_config_path

    overrides = {
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source.stages": [{"name": "source", "train": ["*"], "epochs": 2}],
        "stages": [
            {"name": "head", "train": ["head"], "epochs": 2, "lr": 0.01},
            {"name": "finetune", "train": ["*"], "epochs": 2, "lr_groups": {"features": 0.0003}},
        ],
        "baseline.stages": [{"name": "scratch", "train": ["*"], "epochs": 2}],
        "training.center_loss": 0.01,
        "cache": "disk",
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    return load_config(resolve_config_path("images/digits"), ImageConfig, overrides)


@pytest.mark.slow
def test_digits_demo_end_to_end(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_digits_config(tmp_path)
    result = run_image(config, progress=False, log=lambda *_: None)
    run = tmp_path / "runs" / "digits"
    assert result.run_dir == run and result.source is not None and result.scratch is not None
    assert [s.name for s in result.transfer.stages] == ["head", "finetune"]
    assert result.transfer.stages[0].cached and not result.transfer.stages[1].cached
    assert result.transfer.evaluated_on == "test" and 0.0 <= result.transfer.accuracy <= 1.0
    report = json.loads((run / "report.json").read_text())
    assert set(report["accuracy"]) == {"source", "transfer", "scratch"}
    assert "transfer" in (run / "report.md").read_text()
    for name in (
        "model/model.pt",
        "model/model.json",
        "source-model/model.pt",
        "confusion-transfer.png",
        "config.yaml",
    ):
        assert (run / name).is_file(), name
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 2  # train and validation features
    events = EventAccumulator(str(run / "transfer")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "loss/train",
        "loss/val",
        "accuracy/train",
        "accuracy/val",
        "lr/default",
        "lr/features",
        "test/accuracy",
    } <= scalars
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert {"hparams/test_accuracy", "hparams/best_val_accuracy"} <= scalars
    # the lr groups in TensorBoard: the features group ran at its own rate
    assert events.Scalars("lr/features")[-1].value == pytest.approx(0.0003)
    # a rerun serves the head stage's features from disk
    again = run_image(
        tiny_digits_config(
            tmp_path,
            **{
                "name": "again",
                "baseline.enabled": False,
                "source": None,
                "model.weights": str(run / "source-model"),
            },
        ),
        progress=False,
        log=lambda *_: None,
    )
    assert again.cache_hits == 2 and again.cache_misses == 0


@pytest.mark.slow
def test_cli_image_and_predict(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for digit in (5, 6, 7):
        path = tmp_path / f"digit{digit}.png"
        index = int(np.flatnonzero(digits.target == digit)[0])
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(path)
        images.append(str(path))
    cli = [sys.executable, "-m", "rltransfer.cli"]
    run = subprocess.run(
        [
            *cli,
            "image",
            "images/digits",
            "--log-root",
            str(tmp_path / "runs"),
            "--no-progress",
            "--device",
            "cpu",
            "--set",
            "data.digits.classes=[5,6,7]",
            "--set",
            "source.stages=[{name: s, train: ['*'], epochs: 3}]",
            "--set",
            "stages=[{name: head, epochs: 3}]",
            "--set",
            "baseline.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "transferred model test accuracy" in run.stdout
    predicted = subprocess.run(
        [*cli, "image", "predict", str(tmp_path / "runs" / "digits"), *images],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert predicted.returncode == 0, predicted.stderr
    rows = [line.split("\t") for line in predicted.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == images and all(row[1] in {"5", "6", "7"} for row in rows)
    missing = subprocess.run(
        [*cli, "image", "predict", str(tmp_path / "runs" / "digits"), "nope.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "Image nope.png does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    unknown = subprocess.run(
        [*cli, "image", "images/digits", "--set", "model.arch=resnet81"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=fresh,
    )
    assert unknown.returncode == 2 and "did you mean `resnet18`" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert list(fresh.iterdir()) == []  # the model is checked before the run directory is made


@pytest.mark.slow
def test_folder_config_with_resnet18_runs_on_an_image_folder(tmp_path: Path) -> None:
    from rltransfer.core.config import load_config, resolve_config_path

    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 3)):
        for index, name in enumerate(("cat", "dog")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(80 + 90 * index, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.jpg")
    overrides = {
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "model.weights": None,
        "data.image_size": 32,
        "data.folder": str(tmp_path / "train"),
        "data.test_folder": str(tmp_path / "test"),
        "data.batch_size": 8,
        "stages": [
            {"name": "head", "train": ["head"], "epochs": 2},
            {"name": "finetune", "train": ["layer4", "head"], "epochs": 1, "lr_groups": {"layer4": 1e-5}},
        ],
        "baseline.stages": [{"name": "scratch", "train": ["*"], "epochs": 1}],
    }
    config = load_config(resolve_config_path("images/folder"), ImageConfig, overrides)
    result = run_image(config, progress=False, log=lambda *_: None)
    head, finetune = result.transfer.stages
    # augmentation is on, so `cache: memory` trains the head on un-augmented cached features
    assert head.cached and head.trainable == ["fc"] and not finetune.cached
    assert finetune.trainable == ["layer4", "fc"] and result.transfer.evaluated_on == "test"
    assert len(result.transfer.confusion) == 2 and sum(map(sum, result.transfer.confusion)) == 6


class TinyNet(torch.nn.Module):
    """A user's own module: rltransfer finds its last Linear as the head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def test_a_users_own_module_transfers_and_reloads(tmp_path: Path) -> None:
    from rltransfer.core.errors import TransferError
    from rltransfer.vision.models import load_classifier
    from rltransfer.vision.pipeline import predict

    config = {
        "name": "own",
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {
            "data": {"digits": {"classes": [0, 1, 2]}},
            "stages": [{"name": "s", "train": ["*"], "epochs": 3}],
        },
        "data": {"digits": {"classes": [3, 4], "per_class": 10}},
        "stages": [{"name": "head", "train": ["head"], "epochs": 2}],
        "baseline": {"stages": [{"name": "scratch", "train": ["*"], "epochs": 1}]},
    }
    torch.manual_seed(0)
    net = TinyNet()
    result = run_image(config, progress=False, log=lambda *_: None, model=net)
    assert result.transfer.stages[0].trainable == ["out"] and result.transfer.stages[0].cached
    source = torch.load(tmp_path / "runs/own/source-model/model.pt", weights_only=True)
    target = torch.load(tmp_path / "runs/own/model/model.pt", weights_only=True)
    assert torch.equal(
        source["body.1.weight"], target["body.1.weight"]
    )  # trunk copied, frozen in the head stage
    assert source["out.weight"].shape == (3, 32) and target["out.weight"].shape == (2, 32)
    assert not torch.equal(net.body[1].weight, source["body.1.weight"])  # the caller's module is left alone
    with pytest.raises(TransferError, match="trained from your own module TinyNet"):
        load_classifier(tmp_path / "runs/own")
    # an interrupted run of a user module resumes only with that module
    from rltransfer.core.errors import ConfigError
    from rltransfer.vision.pipeline import CHECKPOINT_FILE

    torch.save(
        {"version": 1, "phase": "scratch", "done": {}, "state": None, "custom": "TinyNet"},
        tmp_path / "runs/own" / CHECKPOINT_FILE,
    )
    with pytest.raises(ConfigError, match=r"your own module TinyNet: resume it from Python"):
        run_image(resume=tmp_path / "runs/own", progress=False, log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"trained with your own module TinyNet"):
        run_image(
            resume=tmp_path / "runs/own", progress=False, log=lambda *_: None, model=torch.nn.Linear(2, 2)
        )
    model, spec = load_classifier(tmp_path / "runs/own", module=TinyNet())
    assert spec.classes == ["3", "4"] and torch.equal(model.out.weight, target["out.weight"])
    image = tmp_path / "three.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert predict(tmp_path / "runs/own", [image], "cpu", module=TinyNet())[0][1] in {"3", "4"}
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(
        DataError, match="broken.png is corrupt, truncated or not an image; leave it out"
    ) as error:
        predict(tmp_path / "runs/own", [tmp_path / "broken.png"], "cpu", module=TinyNet())
    assert "skip_corrupt" not in str(error.value)
    with pytest.raises(DataError, match="is a folder; give image files"):
        predict(tmp_path / "runs/own", [tmp_path], "cpu", module=TinyNet())


def test_center_loss_pulls_features_to_their_class_centers() -> None:
    from rltransfer.vision.stages import CenterLoss

    torch.manual_seed(0)
    features = torch.randn(60, 4) + torch.repeat_interleave(torch.eye(3, 4) * 5, 20, dim=0)
    labels = torch.arange(3).repeat_interleave(20)
    loss = CenterLoss(3, 4)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    start = loss(features, labels).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss(features, labels).backward()
        optimizer.step()
    assert loss(features, labels).item() < start / 5
    class_means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(loss.centers.detach(), class_means, atol=0.05)


@pytest.mark.slow
def test_disk_cache_hits_and_misses_give_the_same_model(tmp_path: Path) -> None:
    """Computing features must not move the random stream: a cache hit and a miss train the same head."""
    first = run_image(
        tiny_digits_config(tmp_path, name="miss", **{"baseline.enabled": False}),
        progress=False,
        log=lambda *_: None,
    )
    second = run_image(
        tiny_digits_config(tmp_path, name="hit", **{"baseline.enabled": False}),
        progress=False,
        log=lambda *_: None,
    )
    assert (first.cache_misses, second.cache_hits) == (2, 2)  # the head stage: train and validation features
    a, b = (torch.load(r.run_dir / "model" / "model.pt", weights_only=True) for r in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_config_mistakes_are_caught_before_anything_runs(tmp_path: Path) -> None:
    from rltransfer.core.errors import ConfigError
    from rltransfer.vision.data import DataError

    with pytest.raises(
        ConfigError, match=r"`baseline.stages.0.train` \(stage scratch\): The layer selector `fetures`"
    ):
        run_image(
            tiny_digits_config(tmp_path, **{"baseline.stages": [{"name": "scratch", "train": ["fetures"]}]}),
            progress=False,
            log=lambda *_: None,
        )
    with pytest.raises(ConfigError, match=r"`stages.1.lr_groups.layer9`"):
        run_image(
            tiny_digits_config(
                tmp_path, **{"stages": [{"name": "a"}, {"name": "b", "lr_groups": {"layer9": 0.1}}]}
            ),
            progress=False,
            log=lambda *_: None,
        )
    with pytest.raises(DataError, match=r"`data.digits.per_class`: digit 5 has \d+ images"):
        run_image(
            tiny_digits_config(tmp_path, **{"data.digits.per_class": 500}),
            progress=False,
            log=lambda *_: None,
        )
    with pytest.raises(ConfigError, match=r"cannot take \(3, 16, 16\) inputs.*Raise `data.image_size`"):
        run_image(
            tiny_digits_config(
                tmp_path,
                **{"model.arch": "alexnet", "data.image_size": 16, "source": None, "data.channels": 3},
            ),
            progress=False,
            log=lambda *_: None,
        )
    assert not (tmp_path / "runs").exists()  # nothing written, no source trained


@pytest.mark.slow
def test_weights_from_an_image_run_directory(tmp_path: Path) -> None:
    source = run_image(
        tiny_digits_config(tmp_path, name="src", **{"baseline.enabled": False}),
        progress=False,
        log=lambda *_: None,
    )
    again = run_image(
        tiny_digits_config(
            tmp_path,
            name="from-run",
            **{"source": None, "baseline.enabled": False, "model.weights": str(source.run_dir)},
        ),
        progress=False,
        log=lambda *_: None,
    )
    trained = torch.load(source.run_dir / "model" / "model.pt", weights_only=True)
    assert again.transfer.stages[0].cached  # the trunk came from the run's model/ folder and stayed frozen
    head_stage_start = torch.load(again.run_dir / "model" / "model.pt", weights_only=True)
    assert head_stage_start["fc.linear.weight"].shape == trained["fc.linear.weight"].shape


def test_a_transfer_with_nothing_to_transfer_says_so(tmp_path: Path) -> None:
    config = tiny_digits_config(tmp_path, name="nothing").model_copy(update={"source": None})
    result = run_image(config, progress=False, log=lambda *_: None)
    assert not result.transferred and "nothing was transferred" in result.summary()
    report = (result.run_dir / "report.md").read_text()
    assert "Nothing was transferred" in report and "between two random starts" in report
    assert result.scratch is not None  # the baseline still ran: the numbers are there, the claim is not


@pytest.mark.slow
def test_a_timm_model_runs_the_same_stages_cache_report_and_predict(tmp_path: Path) -> None:
    """Random weights, digits data: source, head stage on cached trunk features, fine-tuning, scratch baseline,
    and the saved model read back for predict, all through timm's own head API."""
    pytest.importorskip("timm", reason="the timm extra is part of the test install (see README)")
    from rltransfer.vision import load_classifier

    data = {"image_size": 32, "channels": 1, "normalize": "none"}
    config = {
        "name": "timm-digits",
        "device": "cpu",
        "log_root": str(tmp_path / "runs"),
        "model": {"arch": "timm/test_resnet", "dropout": 0.2},
        "source": {
            "data": {"digits": {"classes": [0, 1, 2]}, "batch_size": 64, **data},
            "stages": [{"name": "source", "train": ["*"], "epochs": 1, "lr": 0.003}],
        },
        "data": {"digits": {"classes": [5, 6, 7], "per_class": 10}, "batch_size": 16, **data},
        "stages": [
            {"name": "head", "train": ["head"], "epochs": 2, "lr": 0.003},
            {"name": "all", "train": ["*"], "epochs": 1, "lr": 0.001},
        ],
        "baseline": {"stages": [{"name": "scratch", "train": ["*"], "epochs": 1, "lr": 0.003}]},
        "cache": "memory",
    }
    result = run_image(config, progress=False, log=lambda *_: None)
    report = (result.run_dir / "report.md").read_text()
    assert "Architecture `timm/test_resnet`" in report and "head: 2/2" in report and "cached" in report
    model, spec = load_classifier(result.transfer.model_dir)
    assert spec.arch == "timm/test_resnet" and spec.head == "fc"
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_image_l2sp_pulls_toward_the_start_weights_and_is_exactly_zero_there() -> None:
    """`training.decay_to: source`: the penalty's gradient is exactly zero at the anchored weights; unanchored
    weight matrices (a new head) get plain L2, and the optimizer's own weight decay is off."""
    from rltransfer.vision.stages import build_stage_optimizer

    model, spec = small_model()
    anchors = {
        k: p.detach().clone() for k, p in model.named_parameters() if not k.startswith(f"{spec.head}.")
    }
    stage = StageConfig(name="all", train=["*"], epochs=1, lr=0.1)
    training = TrainingConfig(optimizer="sgd", weight_decay=0.5, decay_to="source")
    optimizer = build_stage_optimizer(model, stage, training, [spec.head], anchors)
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)
    head_before = {
        k: p.detach().clone() for k, p in model.named_parameters() if k.startswith(f"{spec.head}.")
    }
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for key, param in model.named_parameters():
        if key in anchors:
            assert torch.equal(param, anchors[key]), key  # at the source: no pull at all
        elif param.dim() > 1:
            torch.testing.assert_close(param, head_before[key] * (1 - 0.1 * 0.5))  # plain L2 on the new head
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key in anchors:
                param.add_(1.0)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # away from the source: pulled back by lr * strength * (w - w_source)
    for key, param in model.named_parameters():
        if key in anchors:
            torch.testing.assert_close(param, anchors[key] + 1.0 - 0.1 * 0.5 * 1.0)


def test_image_l2sp_runs_the_transfer_phase_and_needs_something_to_decay_toward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rltransfer.vision import trainer as trainer_module

    built, anchored = trainer_module.build_stage_optimizer, []

    def spy(model, stage, training, heads, anchors=None):
        anchored.append((stage.name, None if anchors is None else sorted(anchors)))
        return built(model, stage, training, heads, anchors)

    monkeypatch.setattr(trainer_module, "build_stage_optimizer", spy)
    config = tiny_digits_config(
        tmp_path,
        **{
            "training.decay_to": "source",
            "training.weight_decay": 0.01,
            "training.center_loss": 0.0,
            "source.stages": [{"name": "source", "train": ["*"], "epochs": 1}],
            "stages": [{"name": "finetune", "train": ["*"], "epochs": 1}],
            "baseline.enabled": False,
        },
    )
    result = run_image(config, progress=False, log=lambda *_: None)
    assert result.transferred and result.transfer.stages[0].name == "finetune"
    (source_stage, source_anchors), (transfer_stage, transfer_anchors) = anchored
    assert (source_stage, source_anchors) == ("source", None)  # the source phase: plain L2
    assert (
        transfer_stage == "finetune" and transfer_anchors
    )  # the transfer phase: anchored at its start weights
    head = small_model()[1].head  # the digits config's small CNN
    assert not any(name.startswith(f"{head}.") for name in transfer_anchors)  # the new head: plain L2
    assert any(name.startswith("features.") for name in transfer_anchors)
    with pytest.raises(ConfigError, match="starts from random weights"):
        run_image(
            config.model_copy(update={"source": None, "name": "random"}), progress=False, log=lambda *_: 0
        )
    assert not (tmp_path / "runs" / "random").exists()


def test_predict_with_a_model_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    from rltransfer.core.errors import TransferError
    from rltransfer.vision.pipeline import predict

    (tmp_path / "run").mkdir()
    with pytest.raises(TransferError, match=r"Model .*run/model.json does not exist"):
        predict(tmp_path / "run" / "model.json", [tmp_path / "x.png"], device="cpu")


def test_image_l2sp_without_a_strength_is_refused() -> None:
    with pytest.raises(ValueError, match="weight_decay"):
        TrainingConfig(decay_to="source", weight_decay=0.0)
