"""replace_head / freeze on every listed torchvision architecture (random weights, no download), the small CNN,
weights files, and frozen BatchNorm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")

from rltransfer import frozen_layers  # noqa: E402
from rltransfer.core.errors import ConfigError, TransferError  # noqa: E402
from rltransfer.core.layers import count_parameters  # noqa: E402
from rltransfer.vision.config import StageConfig, TrainingConfig  # noqa: E402
from rltransfer.vision.models import (  # noqa: E402
    TESTED_ARCHITECTURES,
    DropoutHead,
    ModelSpec,
    build_architecture,
    build_classifier,
    set_classes,
)
from rltransfer.vision.stages import build_stage_optimizer, configure_stage  # noqa: E402

# the smallest inputs that exercise every path (auxiliary heads included) quickly on a CPU
SIZES = {"inception_v3": 299, "vit_b_16": 224}
EXPECTED_HEADS = {
    "resnet18": ("fc", []),
    "resnet50": ("fc", []),
    "mobilenet_v3_small": ("classifier.3", []),
    "efficientnet_b0": ("classifier.1", []),
    "convnext_tiny": ("classifier.2", []),
    "vit_b_16": ("heads.head", []),
    "inception_v3": ("fc", ["AuxLogits.fc"]),
    "googlenet": ("fc", ["aux1.fc2", "aux2.fc2"]),
}


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(arch, marks=pytest.mark.slow) if arch in ("vit_b_16", "inception_v3") else arch
        for arch in TESTED_ARCHITECTURES
    ],
)
def test_replace_head_and_freeze_the_trunk(arch: str) -> None:
    torch.manual_seed(0)
    model = build_architecture(arch)
    example = torch.randn(2, 3, SIZES.get(arch, 64), SIZES.get(arch, 64))
    head, aux = set_classes(model, 7, dropout=0.25, example_input=example)
    assert (head, aux) == EXPECTED_HEADS[arch]
    assert isinstance(model.get_submodule(head), DropoutHead)
    for name in aux:
        assert model.get_submodule(name).out_features == 7
    configure_stage(model, ["head"], [head, *aux])
    head_params = sum(p.numel() for p in model.get_submodule(head).parameters())
    trainable, frozen = count_parameters(model)
    assert trainable == head_params == model.get_submodule(head).linear.in_features * 7 + 7
    assert frozen > 0 and f"{head}.linear" not in frozen_layers(model)
    model.eval()
    with torch.no_grad():
        assert model(example).shape == (2, 7)
    if aux:  # training mode answers with every head, each sized for the new classes
        model.train()
        with torch.no_grad():
            outputs = model(example)
        assert [tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor)] == [(2, 7)] * (1 + len(aux))


def test_unknown_architecture_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown architecture `resnet81`.*did you mean `resnet18`"):
        build_architecture("resnet81")


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(build_architecture("resnet18").state_dict(), path)
    spec = ModelSpec(arch="mobilenet_v3_small", num_classes=3, classes=["a", "b", "c"], image_size=64)
    with pytest.raises(
        TransferError, match=r"resnet18\.pt do not fit a mobilenet_v3_small.*set `model.arch`"
    ):
        build_classifier(spec, str(path))


def test_weights_from_a_file_load_into_the_trunk(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_architecture("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    spec = ModelSpec(arch="resnet18", num_classes=4, classes=list("abcd"), image_size=64)
    model = build_classifier(spec, str(path))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 4


def test_a_pickled_weights_file_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "payload": Payload()}, path)
    spec = ModelSpec(arch="small_cnn", num_classes=2, classes=["a", "b"], in_channels=1, image_size=8)
    with pytest.raises(TransferError, match="Cannot read weights") as refused:
        build_classifier(spec, str(path))
    assert not marker.exists()
    # what the loader objected to, and never torch's advice to load the file unsafely
    assert "Unsupported global" in str(refused.value) and "weights_only" not in str(refused.value)
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(TransferError, match=r"garbage.pt: not a PyTorch weights file") as refused:
        build_classifier(spec, str(tmp_path / "garbage.pt"))
    assert "weights_only" not in str(refused.value)

    class Blocked:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("true",))

    torch.save({"conv.weight": Blocked()}, tmp_path / "blocked.pt")
    with pytest.raises(TransferError, match=r"blocked.pt: Trying to load unsupported GLOBAL \w+\.system"):
        build_classifier(spec, str(tmp_path / "blocked.pt"))


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        key: value.clone()
        for key, value in model.state_dict().items()
        if any(word in key for word in ("running_", "num_batches", "bn", "features.1.", "features.4."))
    }


@pytest.mark.parametrize("policy", ["fixed", "update_stats"])
def test_frozen_batchnorm_policy(policy: str) -> None:
    torch.manual_seed(0)
    model = build_architecture("small_cnn", in_channels=1)
    head, aux = set_classes(model, 3)
    configure_stage(model, ["head"], [head], frozen_batchnorm=policy)
    bn = model.features[1]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    optimizer = build_stage_optimizer(model, StageConfig(name="head", lr=0.1), TrainingConfig(), [head])
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8) * 3 + 1), torch.randint(0, 3, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = bn.state_dict()
    assert torch.equal(after["weight"], before["weight"]) and torch.equal(after["bias"], before["bias"])
    stats_same = torch.equal(after["running_mean"], before["running_mean"])
    assert stats_same if policy == "fixed" else not stats_same
    assert bn.training is (policy == "update_stats")


def test_lr_groups_are_named_in_config_order() -> None:
    model = build_architecture("small_cnn", in_channels=1)
    head, _ = set_classes(model, 3)
    configure_stage(model, ["*"], [head])
    stage = StageConfig(name="ft", train=["*"], lr=1e-3, lr_groups={"features": 1e-4})
    optimizer = build_stage_optimizer(model, stage, TrainingConfig(weight_decay=0.01, l1=1e-5), [head])
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("features", 1e-4), ("default", 1e-3)]
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_parameters(model)[0]
    configure_stage(model, ["head"], [head])
    with pytest.raises(ConfigError, match=r"`lr_groups.features` selects no trainable layer"):
        build_stage_optimizer(model, stage, TrainingConfig(), [head])


def test_unknown_registry_weight_names_list_the_real_ones() -> None:
    spec = ModelSpec(arch="resnet18", num_classes=2, classes=["a", "b"], image_size=64)
    with pytest.raises(
        ConfigError, match=r"`IMAGENET1K_V9` is not a file.*did you mean `IMAGENET1K_V1`.*DEFAULT"
    ):
        build_classifier(spec, "IMAGENET1K_V9")


@pytest.mark.parametrize(("arch", "head"), [("timm/test_vit", "head"), ("timm/test_resnet", "fc")])
def test_timm_models_get_their_head_through_timms_classifier_api(arch: str, head: str) -> None:
    """Random weights, no download: timm builds the model (grey input through its own `in_chans`), its
    reset_classifier makes the new head, and freezing the trunk leaves only that head training."""
    pytest.importorskip("timm", reason="the timm extra is part of the test install (see README)")
    from rltransfer import freeze

    torch.manual_seed(0)
    spec = ModelSpec(
        arch=arch, num_classes=4, classes=list("abcd"), in_channels=1, image_size=32, dropout=0.2
    )
    model = build_classifier(spec)
    assert spec.head == head and isinstance(model.get_submodule(head), DropoutHead)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    freeze(model, "*")
    set_classes(model, 3, 0.0)  # a new head after everything was frozen: it trains (PyTorch's convention)
    assert model.get_classifier() is model.get_submodule(head) and model.get_classifier().out_features == 3
    assert frozen_layers(model) and all(p.requires_grad for p in model.get_classifier().parameters())
    trainable, _ = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.get_classifier().parameters())


def test_timm_weights_load_by_timms_names_and_an_offline_registry_fails_cleanly(
    tmp_path: Path, monkeypatch
) -> None:
    timm = pytest.importorskip("timm", reason="the timm extra is part of the test install (see README)")
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False, in_chans=1)
    torch.save(source.state_dict(), tmp_path / "resnet.pt")
    spec = ModelSpec(arch="timm/test_resnet", num_classes=2, classes=["a", "b"], in_channels=1, image_size=32)
    model = build_classifier(spec, weights=str(tmp_path / "resnet.pt"))
    trunk = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in trunk)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no Hub from the tests: the registry path must fail in words
    with pytest.raises(TransferError, match="Could not fetch timm's test_resnet weights `in1k`"):
        build_classifier(spec, weights="in1k")
    with pytest.raises(ConfigError, match="timm has no model `test_resnett`"):
        build_architecture("timm/test_resnett")
