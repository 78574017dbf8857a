"""Interrupted runs resume: Ctrl-C / SIGTERM save a checkpoint and exit cleanly; --resume continues where the run
stopped, with the same curves and (for image runs, which checkpoint at epoch boundaries) the same final weights."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")

from rltransfer.core.config import load_config, resolve_config_path  # noqa: E402
from rltransfer.core.errors import ConfigError  # noqa: E402
from rltransfer.core.interrupt import Interrupted  # noqa: E402
from rltransfer.vision import epochs as vision_epochs  # noqa: E402
from rltransfer.vision import stages as vision_stages  # noqa: E402
from rltransfer.vision import trainer as vision_trainer  # noqa: E402
from rltransfer.vision.config import ImageConfig  # noqa: E402
from rltransfer.vision.pipeline import run_image  # noqa: E402

QUIET = {"progress": False, "log": lambda *_: None}


def digits(tmp_path: Path, name: str, **extra: Any) -> ImageConfig:
    overrides = {
        "name": name,
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "checkpoint_seconds": 0,
        "source.stages": [{"name": "source", "train": ["*"], "epochs": 4}],
        "stages": [
            {"name": "head", "train": ["head"], "epochs": 3, "lr": 0.01, "schedule": "cosine"},
            {"name": "finetune", "train": ["*"], "epochs": 3, "lr_groups": {"features": 0.0003}},
        ],
        "baseline.stages": [{"name": "scratch", "train": ["*"], "epochs": 4, "schedule": "step"}],
        "training.center_loss": 0.01,
        **extra,
    }
    return load_config(resolve_config_path("images/digits"), ImageConfig, overrides)


def scalars(run: Path, phase: str, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / phase)).Reload()
    return sorted((e.step, e.value) for e in events.Scalars(tag))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("straight")
    run_image(digits(tmp_path, "straight"), **QUIET)
    return tmp_path / "runs" / "straight"


# epoch-end checks counted over the whole run: inside the source, inside the cached head stage, at the boundary
# between the transfer's stages, mid-way through fine-tuning, inside the scratch baseline
@pytest.mark.parametrize("stop_at", [7, *(pytest.param(n, marks=pytest.mark.slow) for n in (2, 5, 9, 13))])
def test_interrupt_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Path, stop_at: int
) -> None:
    calls = []

    def stop_after_some_epochs() -> int | None:
        calls.append(1)
        return signal.SIGINT if len(calls) == stop_at else None

    monkeypatch.setattr(vision_trainer, "stop_requested", stop_after_some_epochs)
    with pytest.raises(Interrupted, match=r"Stopped by SIGINT.*--resume") as stopped:
        run_image(digits(tmp_path, "cut"), **QUIET)
    run = tmp_path / "runs" / "cut"
    assert stopped.value.exit_code == 130 and (run / "checkpoint.pt").is_file()
    assert '"status": "interrupted"' in (run / "run.json").read_text()
    monkeypatch.setattr(vision_trainer, "stop_requested", lambda: None)
    result = run_image(resume=run, **QUIET)
    assert not (run / "checkpoint.pt").exists() and '"status": "finished"' in (run / "run.json").read_text()
    for name in ("model/model.pt", "source-model/model.pt"):
        resumed, straight = (torch.load(r / name, weights_only=True) for r in (run, uninterrupted))
        assert all(torch.equal(resumed[key], straight[key]) for key in straight), name
    for phase in ("source", "transfer", "scratch"):
        for tag in ("accuracy/val", "loss/train"):
            assert scalars(run, phase, tag) == scalars(uninterrupted, phase, tag), (phase, tag)
    report = json.loads((uninterrupted / "report.json").read_text())
    assert [s.best_epoch for s in result.transfer.stages] == [
        s["best_epoch"] for s in report["phases"][1]["stages"]
    ]


def test_resume_refuses_finished_damaged_and_foreign_runs(tmp_path: Path, uninterrupted: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint to resume \\(the run finished\\)"):
        run_image(resume=uninterrupted, **QUIET)
    with pytest.raises(ConfigError, match="not an rltransfer image run"):
        run_image(resume=tmp_path, **QUIET)
    run = tmp_path / "torn"
    run.mkdir()
    (run / "config.yaml").write_text((uninterrupted / "config.yaml").read_text())
    (run / "checkpoint.pt").write_bytes((uninterrupted / "model" / "model.pt").read_bytes()[:500])
    with pytest.raises(ConfigError, match=r"checkpoint .*checkpoint\.pt is truncated or damaged"):
        run_image(resume=run, **QUIET)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_image_signal_then_resume(tmp_path: Path, signum: int, cli: Any) -> None:
    run = tmp_path / "runs" / "digits"
    code, stderr = cli.signal_when_ready(cli.long_image_run(tmp_path / "runs"), run / "checkpoint.pt", signum)
    assert code == 128 + signum, stderr
    assert f"Stopped by {signal.Signals(signum).name}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and (run / "checkpoint.pt").is_file()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    epoch = checkpoint["state"]["stage_epoch"]
    assert checkpoint["phase"] == "source" and epoch >= 1
    # continue it, with the source shortened so the test ends: the resumed run uses the run's own config.yaml
    cli.shorten_budget(run, "epochs: 400", f"epochs: {epoch + 2}")
    resumed = cli.resume("image", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after epoch {epoch}" in resumed.stdout
    assert "transferred model test accuracy" in resumed.stdout and (run / "model" / "model.pt").is_file()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rltransfer.core.errors import NumericalError

    real_forward = vision_epochs.EpochLoop._forward

    def poisoned(self: vision_epochs.EpochLoop, inputs: torch.Tensor, cached: bool) -> Any:
        logits, aux, features = real_forward(self, inputs, cached)
        if (
            self.label == "transfer" and not cached
        ):  # the fine-tuning stage (the head stage trains on the cache)
            logits = logits * float("nan")
        return logits, aux, features

    monkeypatch.setattr(vision_epochs.EpochLoop, "_forward", poisoned)
    with pytest.raises(
        NumericalError,
        match=r"transfer stage finetune: the loss became nan in epoch 4, batch 1.*"
        r"learning rate.*last good checkpoint is kept",
    ):
        run_image(digits(tmp_path, "nan"), **QUIET)
    run = tmp_path / "runs" / "nan"
    assert '"status": "failed"' in (run / "run.json").read_text()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (checkpoint["phase"], checkpoint["state"]["stage_index"], checkpoint["state"]["stage_epoch"]) == (
        "transfer",
        1,
        0,
    )  # saved when the head stage ended, before the poisoned epoch
    assert all(
        torch.isfinite(t).all() for t in checkpoint["state"]["model"].values() if t.is_floating_point()
    )


def test_an_exploding_parameter_is_named() -> None:
    from rltransfer.core.errors import NumericalError
    from rltransfer.vision.models import SmallConvNet

    model = SmallConvNet(1, 3)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    with pytest.raises(
        NumericalError, match=r"parameter fc.weight became NaN or infinite.*learning rate \(0.5\)"
    ):
        vision_stages.check_finite(model, "transfer stage head, epoch 2", 0.5)


def test_torn_model_files_are_detected_with_a_clear_error(tmp_path: Path, uninterrupted: Path) -> None:
    import shutil

    from rltransfer.core.errors import TransferError
    from rltransfer.vision.models import load_classifier

    model = tmp_path / "model"
    shutil.copytree(uninterrupted / "model", model)
    (model / "model.pt").write_bytes((uninterrupted / "model" / "model.pt").read_bytes()[:1000])
    with pytest.raises(TransferError, match=r"Cannot read weights from .*model\.pt.*truncated"):
        load_classifier(model)
    (model / "model.json").write_text('{"arch": "small_cnn", "num_cl')
    with pytest.raises(TransferError, match=r"model\.json is damaged"):
        load_classifier(model)


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_periodic_checkpoint(tmp_path: Path, cli: Any) -> None:
    run = tmp_path / "runs" / "digits"
    # no chance to save anything: the last periodic checkpoint must do
    cli.signal_when_ready(
        cli.long_image_run(tmp_path / "runs"), run / "checkpoint.pt", signal.SIGKILL, settle=1.0
    )
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)  # whole, never torn
    epoch = checkpoint["state"]["stage_epoch"]
    cli.shorten_budget(run, "epochs: 400", f"epochs: {epoch + 2}")
    resumed = cli.resume("image", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after epoch {epoch}" in resumed.stdout and (run / "model" / "model.pt").is_file()


def test_an_rl_run_given_to_image_resume_is_named_for_what_it_is(tiny_source: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"is a `train` run, not an image run \(`rltransfer train --resume`"
    ):
        run_image(resume=tiny_source, **QUIET)
