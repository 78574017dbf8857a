"""A tiny study end to end: parallel runs, report files, TensorBoard, resume, a failing run, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rltransfer.study.execute
from rltransfer.core.config import parse_config
from rltransfer.core.errors import ConfigError, TransferError
from rltransfer.study import run_study
from rltransfer.study.config import StudyConfig

SOURCE = {
    "budget": 512,
    "device": "cpu",
    "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
    "eval": {"every": 256, "episodes": 2, "patience": None},
    "agent": {
        "algo": "ppo",
        "hyperparams": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
        "policy": {"hidden": [16, 16]},
    },
}


@pytest.fixture
def study(tmp_path: Path) -> dict:
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(SOURCE))
    return {
        "name": "tiny-study",
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {"config": str(tmp_path / "source.yaml")},
        "targets": [{"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}],
        "strategies": [
            "scratch",
            "finetune",
            {"name": "frozen-actor", "freeze": ["mlp_extractor.policy_net.*"]},
        ],
        "seeds": 2,
        "budget": 512,
        "eval": {"every": 256, "episodes": 2},
    }


@pytest.mark.slow
def test_tiny_study_in_parallel_writes_report_plot_and_tensorboard(study, capsys) -> None:
    report = run_study(study, workers=2)
    out, err = capsys.readouterr()
    assert "Note: 2 seeds cannot show a difference at 5% with 6 tests" in err and "--seeds 8" in err
    assert "[6/6]" in out and "short (threshold 475" in out  # progress lines and the terminal table
    assert report.report_md.exists() and report.curves_png.read_bytes()[:4] == b"\x89PNG"
    markdown = report.report_md.read_text()
    assert "| finetune |" in markdown and "![learning curves](curves.png)" in markdown
    # two seeds and six tests (two strategies x three metrics): no verdict is possible, and the report says so
    cannot = "2 seeds cannot show a difference at 5% (6 tests): use at least 8 seeds"
    assert report.verdicts["short"]["finetune"].text == cannot and f"| {cannot} |" in markdown
    assert "| finetune | speed | steps saved" in markdown and "indicative" in markdown
    assert "## Across targets (rliable)" in markdown and report.aggregate_png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(report.report_json.read_text())
    assert data["verdicts"]["short"]["finetune"]["seeds_needed"] == 8
    assert len(data["verdicts"]["short"]["frozen-actor"]["tests"]) == 3
    assert set(data["aggregate"]["iqm"]["area"]) == {"scratch", "finetune", "frozen-actor"}
    assert data["aggregate"]["seeds"] == [0, 1]
    assert set(data["metrics"]["short"]) == {"finetune", "frozen-actor"}
    assert len(data["metrics"]["short"]["finetune"]["per_seed"]) == 2
    assert data["config"]["budget"] == 512 and data["versions"]["stable-baselines3"]
    assert data["strategies"]["frozen-actor"]["freeze"] == ["mlp_extractor.policy_net.*"]
    assert all(run["status"] == "finished" for run in data["runs"].values())
    assert data["runs"]["short/frozen-actor/seed0"]["frozen_unchanged"] is True
    summary = report.study_dir / "summary"
    for strategy in ("scratch", "finetune", "frozen-actor"):
        tags = EventAccumulator(str(summary / "short" / strategy)).Reload().Tags()
        assert "study/mean_return" in tags["scalars"]
    assert (
        "metrics/speedup" in EventAccumulator(str(summary / "short" / "finetune")).Reload().Tags()["scalars"]
    )
    figures = EventAccumulator(str(summary / "figures")).Reload().Tags()
    assert {"study/learning_curves", "study/aggregate"} <= set(figures["images"])
    assert "aggregate/iqm_area/finetune" in figures["scalars"]
    assert "aggregate/probability_of_improvement_area/finetune" in figures["scalars"]
    # every run sits in its own run directory, grouped by target and strategy for TensorBoard
    assert (report.study_dir / "runs" / "short" / "finetune" / "seed1" / "best_model.zip").exists()


@pytest.mark.slow
def test_resume_skips_finished_runs(study, capsys) -> None:
    run_study(study, workers=1)
    first = report_dir = Path(study["log_root"]) / "tiny-study"
    kept = first / "runs" / "short" / "finetune" / "seed0" / "result.json"
    stamp = kept.stat().st_mtime_ns
    (report_dir / "runs" / "short" / "scratch" / "seed1" / "result.json").unlink()  # as if interrupted there
    capsys.readouterr()
    run_study(study, workers=1)
    out = capsys.readouterr().out
    assert "Source: reusing" in out and "Resuming: 5 of 6 runs already finished." in out
    assert "[6/6] short/scratch/seed1" in out and "1 runs in" in out
    assert kept.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_failing_run_is_reported_without_losing_the_others(study, monkeypatch, capsys) -> None:
    real_train = rltransfer.study.execute.train

    def train(config, **kwargs):
        if config.seed == 1 and "scratch" in config.log_root:
            raise RuntimeError("simulated crash")
        return real_train(config, **kwargs)

    monkeypatch.setattr(rltransfer.study.execute, "train", train)
    report = run_study(study, workers=1)
    assert report.failed == {"short/scratch/seed1": "RuntimeError: simulated crash"}
    assert len(report.metrics["short"]["finetune"].per_seed) == 1  # seed 0 still paired and measured
    error = json.loads((report.study_dir / "runs/short/scratch/seed1/error.json").read_text())
    assert "simulated crash" in error["traceback"]
    assert "short/scratch/seed1" in report.report_md.read_text()
    monkeypatch.setattr(rltransfer.study.execute, "train", real_train)
    capsys.readouterr()
    assert run_study(study, workers=1).failed == {}
    assert "Resuming: 5 of 6" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "error", "expected"),
    [
        (
            {"strategies": ["scratch", "fine-tune"]},
            ConfigError,
            "unknown strategy `fine-tune` (did you mean `finetune`?)",
        ),
        (
            {"strategies": [{"name": "x", "freeze": ["mlp_extractor.nothing"]}]},
            ConfigError,
            "`mlp_extractor.nothing` matches no layer",
        ),
        ({"seeds": 0}, ConfigError, "`seeds` is invalid"),
        ({"budget": 0}, ConfigError, "`budget` is invalid"),
        (
            {"targets": [{"id": "rltransfer/CartPoleLongPol-v1"}]},
            ConfigError,
            "did you mean `rltransfer/CartPoleLongPole-v1`",
        ),
        ({"agent": {"algo": "ppo", "policy": {"hidden": [7]}}}, TransferError, "no layer of the source fits"),
        (
            {
                "strategies": [
                    {"name": "via", "chain": [{"env": {"id": "rltransfer/CartPoleLongPol-v1"}, "budget": 9}]}
                ]
            },
            ConfigError,
            "`strategies via.chain.0.env.id` 'rltransfer/CartPoleLongPol-v1' is not a registered",
        ),
        (
            {"strategies": [{"name": "mapped", "layer_map": {"action_net": "mlp_extractor.head"}}]},
            ConfigError,
            "`strategies` mapped: `layer_map.action_net`: `mlp_extractor.head` is not a layer of the source",
        ),
    ],
)
def test_bad_studies_are_rejected_before_any_run(study, change, error, expected) -> None:
    study.update(change)
    with pytest.raises(error) as raised:
        run_study(parse_config(study, StudyConfig, "study.yaml"), workers=1)
    assert expected in str(raised.value)
    assert not Path(study["log_root"]).exists()


@pytest.mark.slow
def test_a_changed_source_invalidates_stored_transfer_results(study, capsys) -> None:
    run_study(study, workers=1)
    study["source"]["seed"] = 5  # another source agent: every transfer run must run again, scratch need not
    capsys.readouterr()
    run_study(study, workers=1)
    captured = capsys.readouterr()
    assert "Source: training" in captured.out and "Resuming: 2 of 6 runs already finished." in captured.out
    # the stale transfer runs were moved aside, not deleted: a re-run never destroys finished results
    assert "4 finished runs in" in captured.err and "moved aside" in captured.err
    runs = Path(study["log_root"]) / study["name"] / "runs"
    aside = [p for p in runs.glob("*/finetune/seed*.*") if (p / "result.json").exists()]
    assert len(aside) == 2 and all(
        json.loads((p / "result.json").read_text())["status"] == "finished" for p in aside
    )


@pytest.mark.slow
def test_study_interrupted_by_signal_resumes_its_runs_from_checkpoints(study, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    study.update(budget=6000, seeds=1, eval={"every": 500, "episodes": 2})
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    study_dir = tmp_path / "runs" / "tiny-study"
    cli = [sys.executable, "-m", "rltransfer.cli", "study"]
    process = subprocess.Popen(
        [*cli, str(config), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if any(study_dir.glob("runs/*/*/*/checkpoint/state.json")):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # the study process only: it asks its workers to checkpoint and stop
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Stopped by SIGINT" in stderr and f"rltransfer study --resume {study_dir}" in stderr
    assert "Traceback" not in stderr
    saved = {p.parent.parent for p in study_dir.glob("runs/*/*/*/checkpoint/state.json")}
    assert saved and not any((run / "error.json").exists() for run in saved)
    resumed = subprocess.run(
        [*cli, "--resume", str(study_dir), "--workers", "2"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (study_dir / "report.md").is_file()
    for run in saved:  # the interrupted runs continued from their checkpoints rather than starting again
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "finished" and record["resumed_from"] > 0


@pytest.mark.slow
def test_a_study_killed_outright_resumes_its_runs_from_their_checkpoints(study, tmp_path: Path) -> None:
    """SIGKILL to the study and its workers (a crash, the OOM killer): no run could mark itself interrupted, yet
    the runs that saved a checkpoint continue from it on --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    study.update(budget=6000, seeds=1, eval={"every": 500, "episodes": 2})
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    study_dir = tmp_path / "runs" / "tiny-study"
    cli = [sys.executable, "-m", "rltransfer.cli", "study"]
    process = subprocess.Popen(
        [*cli, str(config), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(study_dir.glob("runs/*/*/*/checkpoint/state.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    saved = {p.parent.parent for p in study_dir.glob("runs/*/*/*/checkpoint/state.json")}
    assert saved and not any((run / "interrupted.json").exists() for run in saved)
    resumed = subprocess.run([*cli, "--resume", str(study_dir)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for run in saved:
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "finished" and record["resumed_from"] > 0, run


@pytest.mark.slow
def test_a_study_compares_a_chain_with_direct_transfer(study) -> None:
    study["strategies"] = [
        "finetune",
        {"name": "via-long", "chain": [{"env": {"id": "rltransfer/CartPoleLongPole-v1"}, "budget": 256}]},
    ]
    study["seeds"] = 1
    report = run_study(study, workers=1)
    run_dir = report.study_dir / "runs" / "short" / "via-long" / "seed0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["chain"][0]["env"] == "rltransfer/CartPoleLongPole-v1" and record["chain_steps"] >= 256
    assert (run_dir / "chain" / "1-CartPoleLongPole" / "best_model.zip").is_file()
    assert record["source"].endswith("1-CartPoleLongPole/best_model.zip")
    assert set(report.metrics["short"]) == {"finetune", "via-long"}
    assert "the chain spent 256 more steps per seed" in report.report_md.read_text()


def test_resuming_a_finished_study_by_its_directory_redoes_nothing(
    study, tmp_path: Path, monkeypatch
) -> None:
    """Started with a relative log_root, resumed with `--resume STUDY_DIR` (an absolute path): nothing re-runs."""
    from rltransfer.cli import main

    monkeypatch.chdir(tmp_path)
    study.update(log_root="runs", seeds=1, strategies=["scratch", "finetune"])
    run_study(study, workers=1, progress=False)
    results = sorted((tmp_path / "runs" / "tiny-study").rglob("result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]
    assert len(results) == 3  # the source and two runs
    assert main(["study", "--resume", str(tmp_path / "runs" / "tiny-study"), "--workers", "1"]) == 0
    assert [path.stat().st_mtime_ns for path in results] == stamps


def test_an_interrupted_transfer_run_continues_after_the_study_directory_moved(
    study, tmp_path: Path, monkeypatch
) -> None:
    """The run's saved config names the source where it lay; resumed from the new place it still continues."""
    import shutil
    import signal

    from rltransfer.cli import main
    from rltransfer.core.interrupt import Interrupted, request_stop
    from rltransfer.rl.callbacks import Checkpointing

    study.update(seeds=1, strategies=["finetune"], budget=1024)
    original_save = Checkpointing.save

    def save_then_stop(self, **kwargs) -> None:
        original_save(self, **kwargs)
        if "finetune" in str(self.run_dir):
            request_stop(signal.SIGTERM)

    monkeypatch.setattr(Checkpointing, "save", save_then_stop)
    with pytest.raises(Interrupted):
        run_study(study, workers=1, progress=False)
    monkeypatch.setattr(Checkpointing, "save", original_save)
    moved = tmp_path / "elsewhere" / "tiny-study"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "runs" / "tiny-study"), moved)
    assert main(["study", "--resume", str(moved), "--workers", "1"]) == 0
    record = json.loads((moved / "runs" / "short" / "finetune" / "seed0" / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed_from"] > 0
    assert record["source"].startswith(str(moved))


@pytest.mark.parametrize("marker", ["run.json", "tune.yaml"])
def test_a_study_named_like_another_run_leaves_its_folder_alone(study, marker) -> None:
    folder = Path(study["log_root"]) / study["name"]
    folder.mkdir(parents=True)
    for name in (marker, "curves.png", "report.md"):
        (folder / name).write_text(name)
    with pytest.raises(ConfigError, match=rf"tiny-study is the folder of a \w+ \(it holds {marker}\)"):
        run_study(parse_config(study, StudyConfig, "study.yaml"), workers=1)
    assert sorted((p.name, p.read_text()) for p in folder.iterdir()) == sorted(
        (name, name) for name in (marker, "curves.png", "report.md")
    )


def test_a_pool_worker_stopped_by_a_signal_starts_none_of_its_queued_runs(
    tmp_path: Path, monkeypatch
) -> None:
    """The pool hands a worker runs queued before the stop, which cancelling cannot withdraw: once a signal has
    stopped one of its runs, the worker returns them unstarted instead of training them to the end."""
    import signal
    from types import SimpleNamespace

    import torch

    from rltransfer.core.interrupt import request_stop
    from rltransfer.rl.callbacks import Checkpointing

    execute = rltransfer.study.execute
    monkeypatch.setattr(
        execute.multiprocessing, "current_process", lambda: SimpleNamespace(name="SpawnProcess-1")
    )
    monkeypatch.setattr(execute, "_STOPPED_WORKER", [])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the test process keeps its threads
    original_save = Checkpointing.save

    def save_then_stop(self, **kwargs) -> None:
        original_save(self, **kwargs)
        request_stop(signal.SIGTERM)  # as the study's SIGTERM to its worker, right after a checkpoint

    monkeypatch.setattr(Checkpointing, "save", save_then_stop)

    def config(name: str) -> dict:
        return dict(SOURCE, name=name, log_root=str(tmp_path), budget=1024, seed=0, device="cpu")

    first = execute.execute_run("train", config("first"), str(tmp_path / "first"), "f1")
    assert first["status"] == "interrupted" and first["signal"] == signal.SIGTERM
    assert (tmp_path / "first" / "interrupted.json").is_file()
    monkeypatch.setattr(Checkpointing, "save", original_save)
    queued = execute.execute_run("train", config("queued"), str(tmp_path / "queued"), "f2")
    assert queued == {"status": "interrupted", "signal": signal.SIGTERM, "seconds": 0.0, "started": False}
    assert not (tmp_path / "queued").exists()


def test_runs_in_the_study_process_start_again_after_a_stop(study, monkeypatch) -> None:
    """Only pool workers remember a stop: the caller's own process runs the next study (or resume) normally."""
    import signal

    from rltransfer.core.interrupt import Interrupted, request_stop
    from rltransfer.rl.callbacks import Checkpointing

    study.update(seeds=1, strategies=["scratch"], budget=1024)
    original_save = Checkpointing.save

    def save_then_stop(self, **kwargs) -> None:
        original_save(self, **kwargs)
        request_stop(signal.SIGTERM)

    monkeypatch.setattr(Checkpointing, "save", save_then_stop)
    with pytest.raises(Interrupted):
        run_study(study, workers=1, progress=False)
    monkeypatch.setattr(Checkpointing, "save", original_save)
    assert not rltransfer.study.execute._STOPPED_WORKER
    run_study(study, workers=1, progress=False)
    record = json.loads(
        (
            Path(study["log_root"]) / "tiny-study" / "runs" / "short" / "scratch" / "seed0" / "run.json"
        ).read_text()
    )
    assert record["status"] == "finished"
