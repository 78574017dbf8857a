"""Two image models at once (``model.second``): both trunks side by side under one new head, frozen bit for bit
in a head stage, cached as one concatenated feature, saved and rebuilt from plain data, and refused clearly when
the second does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")

from rltransfer.core.config import load_config, resolve_config_path  # noqa: E402
from rltransfer.core.errors import ConfigError, TransferError  # noqa: E402
from rltransfer.vision import models as models_module  # noqa: E402
from rltransfer.vision.cache import FeatureCache, compute_features  # noqa: E402
from rltransfer.vision.config import DataConfig, ImageConfig, StageConfig, TrainingConfig  # noqa: E402
from rltransfer.vision.data import Preprocessing, build_transform, load_task, open_image  # noqa: E402
from rltransfer.vision.models import ModelSpec, TwoTrunks, build_classifier, load_classifier  # noqa: E402
from rltransfer.vision.pipeline import predict, run_image  # noqa: E402
from rltransfer.vision.trainer import Trainer  # noqa: E402

QUIET: dict[str, Any] = {"progress": False, "log": lambda *_: None}
TARGET = {"digits": {"classes": [5, 6, 7], "per_class": 10}, "batch_size": 8}
ROOT = Path(__file__).resolve().parents[1]


def source_run(root: Path, name: str, classes: list[int], seed: int) -> Path:
    """A tiny small-CNN source: an image run trained from random weights on ``classes``; its model/ folder."""
    config = {
        "name": name,
        "seed": seed,
        "device": "cpu",
        "log_root": str(root),
        "data": {"digits": {"classes": classes, "per_class": 20}, "batch_size": 16},
        "stages": [{"name": "source", "train": ["*"], "epochs": 2, "lr": 0.01}],
        "baseline": {"enabled": False},
    }
    return Path(run_image(config, **QUIET).transfer.model_dir or "")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different sources: digits 0-4 (5 classes) and digits 0-2 (3 classes, another seed)."""
    root = tmp_path_factory.mktemp("sources")
    return source_run(root, "a", [0, 1, 2, 3, 4], 0), source_run(root, "b", [0, 1, 2], 1)


def pair_config(tmp_path: Path, sources: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "pair",
        "device": "cpu",
        "log_root": str(tmp_path / "runs"),
        "model": {"arch": "small_cnn", "weights": str(sources[0]), "second": {"weights": str(sources[1])}},
        "data": TARGET,
        "stages": [{"name": "head", "train": ["head"], "epochs": 3, "lr": 0.01, "patience": None}],
        "baseline": {"enabled": False},
        "cache": "memory",
    }
    config.update(extra)
    return config


def pair_spec(dropout: float = 0.0) -> ModelSpec:
    return ModelSpec(
        "small_cnn", 3, ["5", "6", "7"], in_channels=1, image_size=8, dropout=dropout, second="small_cnn"
    )


def trunk_state(folder: Path) -> dict[str, torch.Tensor]:
    """A source run's weights without its head (``fc`` or ``fc.linear``)."""
    state = torch.load(folder / "model.pt", weights_only=True)
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def test_features_are_both_trunks_side_by_side(sources: tuple[Path, Path]) -> None:
    spec = pair_spec(dropout=0.3)
    model = build_classifier(spec, str(sources[0]), str(sources[1]))
    assert isinstance(model, TwoTrunks) and spec.head == "fc" and spec.aux_heads == []
    assert model.features == (256, 256) and model.fc.linear.in_features == 512  # the sum of the two widths
    for name, folder in (("first", sources[0]), ("second", sources[1])):
        own = {
            k.removeprefix(f"{name}."): v for k, v in model.state_dict().items() if k.startswith(f"{name}.")
        }
        expected = trunk_state(folder)
        assert own.keys() == expected.keys() and all(torch.equal(own[k], v) for k, v in expected.items())
    task = load_task(DataConfig(**TARGET), "small_cnn", seed=0)
    features, _ = compute_features(model, spec.head, task.val, "cpu")
    model.eval()
    images = torch.stack([task.val[i][0] for i in range(len(task.val))])
    with torch.no_grad():  # the head reads [first trunk's features, second trunk's], in that order
        expected = torch.cat([model.first(images), model.second(images)], dim=1)
    assert features.shape == (len(task.val), 512) and torch.allclose(features, expected)


def test_a_head_stage_trains_only_the_head_on_cached_features(sources: tuple[Path, Path]) -> None:
    spec = pair_spec()
    model = build_classifier(spec, str(sources[0]), str(sources[1]))
    task = load_task(DataConfig(**TARGET), "small_cnn", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model=model, heads=[spec.head], num_classes=3, training=TrainingConfig(), device="cpu",
        prep=task.preprocessing, batch_size=8, cache=FeatureCache(), progress=False, log=lambda *_: None,
    )  # fmt: skip
    result = trainer.run_stage(
        StageConfig(name="head", epochs=4, lr=0.01, patience=None), task.train, task.val
    )
    assert result.cached and result.trainable == ["fc"] and trainer.cache.misses == 2
    after = model.state_dict()
    trunks = [k for k in before if not k.startswith("fc.")]
    assert any(k.startswith("first.") for k in trunks) and any(k.startswith("second.") for k in trunks)
    assert all(torch.equal(after[k], before[k]) for k in trunks)  # BatchNorm statistics included
    assert not torch.equal(after["fc.weight"], before["fc.weight"])  # the new head learned
    loader = torch.utils.data.DataLoader(task.val, batch_size=64)
    assert trainer.evaluate(loader, cached=False)[1] == pytest.approx(result.best_val_accuracy)


def test_the_cache_is_keyed_by_both_trunks(sources: tuple[Path, Path]) -> None:
    spec = pair_spec()
    model = build_classifier(spec, str(sources[0]), str(sources[1]))
    task = load_task(DataConfig(**TARGET), "small_cnn", seed=0)
    cache = FeatureCache()
    first = cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # the head is not part of the key
    assert cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")[0] is first[0]
    assert (cache.misses, cache.hits) == (1, 1)
    with torch.no_grad():
        model.second.features[0].weight[0, 0, 0, 0] += 0.5  # a changed second trunk is recomputed
    changed = cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    assert cache.misses == 2 and not torch.equal(changed[0][:, 256:], first[0][:, 256:])
    assert torch.equal(changed[0][:, :256], first[0][:, :256])  # ...and only its half of the features moved
    with torch.no_grad():
        model.first.features[1].running_mean += 0.1  # so is a changed buffer of the first
    cache.features(model, [spec.head], task.preprocessing, task.val, "cpu")
    assert cache.misses == 3


@pytest.mark.slow
def test_a_two_source_run_saves_a_model_that_rebuilds_and_predicts_the_same(
    tmp_path: Path, sources: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    built: list[tuple[str | None, str | None]] = []
    real = models_module.build_pair
    monkeypatch.setattr(
        models_module, "build_pair", lambda spec, w, s: built.append((w, s)) or real(spec, w, s)
    )
    config = pair_config(
        tmp_path,
        sources,
        model={
            "weights": str(sources[0]),
            "dropout": 0.2,
            "second": {"arch": "small_cnn", "weights": str(sources[1])},
        },
        stages=[
            {"name": "head", "train": ["head"], "epochs": 2, "lr": 0.01},
            {"name": "all", "train": ["*"], "epochs": 1, "lr": 0.003, "lr_groups": {"*.features": 0.001}},
        ],
        baseline={"stages": [{"name": "scratch", "train": ["*"], "epochs": 1}]},
    )
    result = run_image(config, **QUIET)
    # the transfer is built from both sources, the scratch baseline is the same two trunks from random weights
    assert built == [(str(sources[0]), str(sources[1])), (None, None)]
    assert result.transfer.stages[0].cached and result.cache_misses == 2 and result.scratch is not None
    spec_data = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert spec_data["second"] == "small_cnn" and spec_data["head"] == "fc"
    model, spec = load_classifier(result.run_dir)
    assert isinstance(model, TwoTrunks) and spec.second == "small_cnn"
    task = load_task(DataConfig(**TARGET), "small_cnn", seed=0)
    assert task.test is not None
    images = torch.stack([task.test[i][0] for i in range(len(task.test))])
    labels = torch.tensor([task.test[i][1] for i in range(len(task.test))])
    with torch.no_grad():
        logits = model(images)
    assert float((logits.argmax(1) == labels).float().mean()) == pytest.approx(result.transfer.accuracy)
    digits = load_digits()
    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray((digits.images[digits.target == 5 + index][0] * 255 / 16).astype("uint8")).save(path)
        paths.append(path)
    rows = predict(result.run_dir, paths, device="cpu")
    transform = build_transform(Preprocessing(8, 1, (0.0,), (1.0,)))
    pixels = torch.stack([transform(open_image(p, 1)) for p in paths])
    with torch.no_grad():
        probabilities = torch.softmax(model(pixels), dim=1)
    for (_, label, probability), row in zip(rows, probabilities, strict=True):
        assert label == spec.classes[int(row.argmax())] and probability == pytest.approx(float(row.max()))


@pytest.mark.slow
def test_a_two_source_run_resumes_to_the_same_weights(
    tmp_path: Path, sources: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from rltransfer.core.interrupt import Interrupted
    from rltransfer.vision import trainer as vision_trainer

    stages = [
        {"name": "head", "train": ["head"], "epochs": 2, "lr": 0.01},
        {"name": "all", "train": ["*"], "epochs": 2, "lr": 0.003},
    ]
    straight = run_image(pair_config(tmp_path, sources, name="straight", stages=stages), **QUIET)
    calls: list[int] = []
    monkeypatch.setattr(
        vision_trainer,
        "stop_requested",
        lambda: calls.append(1) or (signal.SIGINT if len(calls) == 3 else None),
    )
    with pytest.raises(Interrupted):
        run_image(pair_config(tmp_path, sources, name="cut", stages=stages, checkpoint_seconds=0), **QUIET)
    monkeypatch.setattr(vision_trainer, "stop_requested", lambda: None)
    resumed = run_image(resume=tmp_path / "runs" / "cut", **QUIET)
    a, b = (torch.load(r.run_dir / "model" / "model.pt", weights_only=True) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_source_phase_trains_the_first_trunk_beside_the_second(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    config = pair_config(
        tmp_path,
        sources,
        model={"second": {"weights": str(sources[1])}},
        source={
            "data": {"digits": {"classes": [0, 1, 2, 3, 4], "per_class": 10}, "batch_size": 16},
            "stages": [{"name": "source", "train": ["*"], "epochs": 1}],
        },
        stages=[{"name": "head", "train": ["head"], "epochs": 1}],
    )
    result = run_image(config, **QUIET)
    assert result.source is not None and result.source.model_dir is not None
    saved = torch.load(result.run_dir / "model" / "model.pt", weights_only=True)
    source_trunk = trunk_state(Path(result.source.model_dir))
    assert all(torch.equal(saved[f"first.{k}"], v) for k, v in source_trunk.items())
    assert all(torch.equal(saved[f"second.{k}"], v) for k, v in trunk_state(sources[1]).items())


def test_a_bad_second_is_refused_before_anything_is_written(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    def second(value: Any, **model: Any) -> dict[str, Any]:
        return pair_config(tmp_path, sources, model={"weights": str(sources[0]), "second": value, **model})

    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (
            second({"weights": str(sources[1]), "wieghts": "x"}),
            ConfigError,
            r"`model.second.wieghts` is not a known",
        ),
        (second({"arch": "small_cnn"}), ConfigError, r"`model.second.weights` is required"),
        (second({"weights": 3}), ConfigError, r"`model.second.weights` is invalid"),
        (second("runs/b"), ConfigError, r"`model.second` is invalid"),
        (
            second({"weights": str(tmp_path / "nope.pt")}),
            TransferError,
            r"nope.pt does not exist. Check the path in `model.second.weights`",
        ),
        (
            second({"arch": "resnet18", "weights": "DEFAULT"}),
            ConfigError,
            r"`model.second.arch`: resnet18 takes 3-channel images but the data has 1",
        ),
        (
            second({"arch": "vit_b_16", "weights": "DEFAULT"}),
            ConfigError,
            r"`model.second.arch`: vit_b_16 needs inputs of at least 224 pixels",
        ),
        (
            second({"arch": "googlenet", "weights": "DEFAULT"}),
            ConfigError,
            r"`model.second.arch`: googlenet has auxiliary heads",
        ),
        (
            second({"weights": str(sources[1])}, weights=None),
            ConfigError,
            r"the first network starts from random weights",
        ),
        (
            {
                **second({"weights": str(sources[1])}),
                "stages": [{"name": "h", "lr_groups": {"features": 0.1}}],
            },
            ConfigError,
            r"`stages.0.lr_groups.features`.*did you mean `(first|second).features`",
        ),
    ]
    colour = tmp_path / "colour.pt"  # a 3-channel first source, for the cases that need colour images
    torch.save(models_module.SmallConvNet(in_channels=3).state_dict(), colour)
    for config, error, message in cases:
        if "vit_b_16" in message or "googlenet" in message:
            config["data"] = {**TARGET, "channels": 3}
            config["model"]["weights"] = str(colour)
        with pytest.raises(error, match=message):
            run_image(config, **QUIET)
    with pytest.raises(ConfigError, match=r"replaces `model.arch` with your own module SmallConvNet"):
        run_image(second({"weights": str(sources[1])}), model=models_module.SmallConvNet(), **QUIET)
    assert not (tmp_path / "runs").exists()


def test_a_two_model_run_is_not_the_weights_of_one_network(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    pair = run_image(pair_config(tmp_path, sources, stages=[{"name": "head", "epochs": 1}]), **QUIET)
    one = pair_config(tmp_path, sources, name="one", model={"weights": str(pair.run_dir)})
    with pytest.raises(TransferError, match=r"holds a two-model network \(small_cnn \+ small_cnn"):
        run_image(one, **QUIET)
    second = pair_config(tmp_path, sources, name="two")
    second["model"]["second"]["weights"] = str(pair.run_dir)
    with pytest.raises(TransferError, match="holds a two-model network"):
        run_image(second, **QUIET)


def test_the_shipped_two_source_config_runs(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    overrides = {
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "model.second.weights": str(sources[0]),
        "source.stages": [{"name": "source", "train": ["*"], "epochs": 1}],
        "stages": [
            {"name": "head", "train": ["head"], "epochs": 1},
            {"name": "finetune", "train": ["*"], "epochs": 1, "lr_groups": {"*.features": 0.001}},
        ],
        "baseline.stages": [{"name": "scratch", "train": ["*"], "epochs": 1}],
    }
    config = load_config(resolve_config_path("images/digits-two-sources"), ImageConfig, overrides)
    shipped = load_config(resolve_config_path("images/digits-two-sources"), ImageConfig)
    assert shipped.model.second is not None and shipped.model.second.weights == "runs/digits/source-model"
    result = run_image(config, **QUIET)
    assert result.transfer.stages[0].cached and result.scratch is not None
    assert "`small_cnn` + `small_cnn` side by side" in (result.run_dir / "report.md").read_text()


@pytest.mark.slow
def test_the_methods_benchmark_runs_one_tiny_seed(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "image_methods.py"
    run = subprocess.run(
        [sys.executable, str(script), "--seeds", "1", "--tiny", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["seeds"] == [0] and set(results["accuracy"]) == {
        "finetune",
        "l2sp",
        "two-sources",
        "head-only",
        "scratch",
    }
    assert len(results["comparisons"]) == 7 and all(row["p"] == 1.0 for row in results["comparisons"])
    assert "| two-sources | finetune |" in run.stdout
