"""Training: evaluation curve, early stopping, the best model kept, TensorBoard contents and server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import rltransfer
import rltransfer.rl.callbacks


def test_run_directory_and_evaluation_curve(tiny_train) -> None:
    result = rltransfer.train(tiny_train, progress_bar=False)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {
        "config.yaml",
        "run.json",
        "best_model.zip",
        "last_model.zip",
        "evaluations.json",
        "progress.csv",
    } <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    assert not any(
        name.endswith(".tmp") or ".tmp." in name for name in files
    )  # no temporary file left behind
    assert [point["step"] for point in result.curve] == [0, 256, 512]
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["timesteps"] == 512 and record["versions"]["torch"]
    assert result.load_best(device="cpu").policy is not None


def test_early_stopping_keeps_the_best_model(tiny_train, monkeypatch) -> None:
    saved: dict[int, dict[str, torch.Tensor]] = {}
    real_save = rltransfer.rl.callbacks.save_model

    def spy(model, path):
        saved[model.num_timesteps] = {k: v.clone() for k, v in model.policy.state_dict().items()}
        return real_save(model, path)

    monkeypatch.setattr(rltransfer.rl.callbacks, "save_model", spy)
    tiny_train.update(budget=20_000)
    tiny_train["eval"].update(every=256, patience=2, min_evals=1)
    result = rltransfer.train(tiny_train, progress_bar=False)
    assert result.timesteps < 20_000 and result.stop_reason == "no improvement in 2 evaluations"
    returns = [point["mean_return"] for point in result.curve[1:]]  # step 0 (untrained) is never kept
    best = max(returns)
    assert result.best_mean_return == best
    latest_best_step = max(p["step"] for p in result.curve[1:] if p["mean_return"] == best)
    assert result.best_step == latest_best_step
    with zipfile.ZipFile(result.best_model) as archive:
        kept = torch.load(BytesIO(archive.read("policy.pth")), weights_only=True)
    for key, value in saved[latest_best_step].items():
        assert torch.equal(kept[key], value), key


def test_threshold_stops_training_after_step_zero(tiny_train) -> None:
    tiny_train.update(budget=5_000)
    tiny_train["eval"].update(threshold=1.0)
    result = rltransfer.train(tiny_train, progress_bar=False)
    assert result.stop_reason == "threshold reached at step 256"
    assert result.timesteps == 256


def tensorboard_tags(run_dir) -> dict[str, list[str]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator.Tags()


def test_tensorboard_events_hold_the_expected_tags(tiny_source, tiny_transfer) -> None:
    tiny_transfer.update(source=str(tiny_source), freeze=["mlp_extractor.policy_net.0"])
    target = rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    for run_dir in (tiny_source, target.run_dir):
        tags = tensorboard_tags(run_dir)
        for tag in (
            "eval/mean_reward",
            "params/trainable",
            "params/frozen",
            "train/learning_rate",
            "train/value_loss",
        ):
            assert tag in tags["scalars"], tag
        assert "config/text_summary" in tags["tensors"]
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= plugin_tags(run_dir, "hparams")
    assert "transfer/layers/text_summary" in tensorboard_tags(target.run_dir)["tensors"]
    frozen = EventAccumulator(str(target.run_dir)).Reload().Scalars("params/frozen")
    assert frozen[0].value == 16 * 4 + 16  # the frozen first layer: 4 inputs x 16 units + bias


def plugin_tags(run_dir, plugin: str) -> set[str]:
    """Tags of the summaries a TensorBoard plugin reads (hparams summaries carry metadata only)."""
    tags = set()
    for path in run_dir.glob("events.out.tfevents*"):
        for event in EventFileLoader(str(path)).Load():
            tags.update(v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == plugin)
    return tags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_server_lists_both_runs(tiny_train, tiny_transfer) -> None:
    source = rltransfer.train(tiny_train, progress_bar=False)
    tiny_transfer.update(source=str(source.run_dir))
    rltransfer.transfer(tiny_transfer, progress_bar=False, verbose=False)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            tiny_train["log_root"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tags: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5
                ) as reply:
                    tags = json.load(reply)
            except OSError:
                pass
            if all("eval/mean_reward" in tags.get(run, {}) for run in ("tiny-source", "tiny-transfer")):
                break
            time.sleep(1)
        assert "eval/mean_reward" in tags.get("tiny-source", {}), tags
        assert "params/frozen" in tags.get("tiny-transfer", {}), tags
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_run_directory_in_use_by_a_live_process_is_refused(tmp_path: Path, tiny_train) -> None:
    from rltransfer.core.errors import ConfigError
    from rltransfer.core.io import prepare_run_dir

    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("the other run's config\n")
    holder = subprocess.Popen(  # another process with the run directory locked, as a live run holds it
        [
            sys.executable, "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
            str(run_dir / ".lock"),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"busy is in use by another rltransfer process"):
            prepare_run_dir(tmp_path / "runs", "busy")
        with pytest.raises(ConfigError, match="in use by another rltransfer process"):
            rltransfer.train({**tiny_train, "name": "busy"}, progress_bar=False)
        with pytest.raises(ConfigError, match="in use by another rltransfer process"):
            rltransfer.train(resume=run_dir, progress_bar=False)
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["busy"]  # nothing moved aside
        assert (run_dir / "config.yaml").read_text() == "the other run's config\n"
    finally:
        holder.kill()
        holder.wait()
    assert prepare_run_dir(tmp_path / "runs", "busy") == run_dir  # once it has ended: moved aside as usual
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_a_log_root_that_is_a_file_is_one_clear_error(tmp_path: Path, tiny_train) -> None:
    from rltransfer.core.errors import StorageError

    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(
        StorageError, match=r"Cannot write .*runs/tiny-source: Not a directory\. Check that .*runs is"
    ):
        rltransfer.train(tiny_train, progress_bar=False)
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_a_full_disk_mid_run_is_recorded_and_the_run_resumes(tmp_path: Path, tiny_train, monkeypatch) -> None:
    import errno
    import tempfile

    from rltransfer.core import io
    from rltransfer.core.errors import StorageError

    real_mkstemp, curves = tempfile.mkstemp, []

    def disk_fills_up(*args, prefix="", **kwargs):
        curves.extend([1] if "evaluations.json" in prefix else [])
        if (
            len(curves) == 3 and "evaluations.json" in prefix
        ):  # the third evaluation's curve: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", disk_fills_up)
    with pytest.raises(StorageError, match=r"Cannot write .*evaluations.json: No space left on device"):
        rltransfer.train(tiny_train, progress_bar=False)
    run_dir = Path(tiny_train["log_root"]) / "tiny-source"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]
    monkeypatch.setattr(io.tempfile, "mkstemp", real_mkstemp)
    result = rltransfer.train(resume=run_dir, progress_bar=False)  # space again: it continues
    assert result.timesteps >= 512 and json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_a_budget_below_one_rollout_is_warned_about(tiny_train, capsys) -> None:
    import rltransfer

    tiny_train.update(
        budget=100, eval={"every": 50, "episodes": 1, "patience": None}
    )  # rollout: 32 x 4 = 128
    rltransfer.train(tiny_train, progress_bar=False)
    assert "one rollout is 128 steps (n_steps 32 x 4 envs) but the budget is 100" in capsys.readouterr().err


def test_a_best_model_evaluated_before_the_first_update_is_called_untrained(tiny_train) -> None:
    # one rollout is 128 x 4 = 512 steps: the evaluations at 256 and 512 both come before the first update
    tiny_train["agent"]["hyperparams"]["n_steps"] = 128
    result = rltransfer.train(tiny_train, progress_bar=False)
    data = json.loads(zipfile.ZipFile(result.best_model).read("data"))
    assert data["_n_updates"] == 0 and result.best_untrained
    assert "Note: the best model is the untrained network" in result.summary()
    assert json.loads((result.run_dir / "run.json").read_text())["best_untrained"] is True
    tiny_train.update(name="trained")  # the tiny config's own rollout (32 x 4) updates before each evaluation
    tiny_train["agent"]["hyperparams"]["n_steps"] = 32
    trained = rltransfer.train(tiny_train, progress_bar=False)
    assert not trained.best_untrained and "untrained" not in trained.summary()


def test_a_file_where_the_run_directory_goes_is_named(tiny_train, tmp_path) -> None:
    import rltransfer
    from rltransfer.core.errors import StorageError

    (tmp_path / "runs").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "tiny-source").write_text("not a folder")
    with pytest.raises(
        StorageError, match="tiny-source is a file, where the run directory `tiny-source` would go"
    ):
        rltransfer.train(tiny_train, progress_bar=False)
