"""A fault campaign: every long-running command is killed outright (SIGKILL: no chance to save anything) at
seeded random moments, a few times over, and resumed as a user would. No run directory may be left unusable
(every ``--resume`` either continues or says the run never began), no finished run or trial may be redone, and
the end result must be whole; the image pipeline, which is deterministic on a CPU, must end bit-identical to an
uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow  # about two minutes: several processes killed and resumed per command

KILLS = 3
SEED = 20261203
TINY_PPO = "agent.hyperparams={n_steps: 64, batch_size: 64, n_epochs: 2}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rltransfer.cli", *args]


def _run(command: list[str], kill_after: float | None) -> tuple[int | None, str]:
    """Run `command`; SIGKILL it after `kill_after` seconds if it is still going. (exit code or None, stderr)"""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is None:
            _, stderr = process.communicate(timeout=300)
            return process.returncode, stderr
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            return None, ""
        return process.returncode, process.communicate()[1]
    finally:
        if process.poll() is None:
            process.kill()


def _campaign(
    start: list[str],
    resume: list[str],
    rng: random.Random,
    window: tuple[float, float],
    check: Callable[[], None],
) -> dict[str, int]:
    """Kill `start` (then `resume`) KILLS times at random moments, then let it finish. After every kill `check`
    runs (what must hold between attempts). A resume that reports the run never began starts it again, as a user
    would; any other refusal means the kill left something unusable and fails the campaign."""
    counts = {"killed": 0, "finished early": 0, "restarted": 0}
    command = start
    for _ in range(KILLS):
        code, stderr = _run(command, rng.uniform(*window))
        if code is None:
            counts["killed"] += 1
            check()
            command = resume
            continue
        assert "Traceback" not in stderr, stderr
        if code == 0 or (code == 2 and "already finished" in stderr):  # it finished just before the kill
            counts["finished early"] += 1
            return counts
        assert code == 2 and ("before it began" in stderr or "is not an rltransfer" in stderr), stderr
        counts["restarted"] += 1  # killed before anything was written: run it again
        command = start
    code, stderr = _run(command, None)
    if code == 2 and "already finished" in stderr:
        return counts
    if code == 2 and ("before it began" in stderr or "is not an rltransfer" in stderr):
        counts["restarted"] += 1
        code, stderr = _run(start, None)
    assert code == 0 and "Traceback" not in stderr, stderr
    return counts


def _finished_stamps(root: Path) -> dict[Path, int]:
    """Every finished run's (or trial's) result.json with its modification time."""
    stamps = {}
    for path in root.rglob("result.json"):
        try:
            if json.loads(path.read_text()).get("status") in ("finished", "pruned"):
                stamps[path] = path.stat().st_mtime_ns
        except (OSError, ValueError):
            continue
    return stamps


def _never_redone(root: Path) -> Callable[[], None]:
    seen: dict[Path, int] = {}

    def check() -> None:
        now = _finished_stamps(root)
        for path, stamp in seen.items():
            assert now.get(path) == stamp, f"{path} was redone or lost"
        seen.update(now)

    return check


def test_train_and_transfer_survive_repeated_kills(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    runs = tmp_path / "runs"
    common = ["--log-root", str(runs), "--device", "cpu", "--no-progress", "--budget", "6144",
              "--set", "eval.every=512", "--set", "eval.episodes=2", "--set", "eval.patience=null",
              "--set", "eval.threshold=null", "--set", "env.n_envs=2", "--set", TINY_PPO]  # fmt: skip
    train = _cli("train", "cartpole/source", "--name", "source", *common)
    counts = _campaign(
        train, _cli("train", "--resume", str(runs / "source"), "--no-progress"), rng, (2.5, 9.0), lambda: None
    )
    record = json.loads((runs / "source" / "run.json").read_text())
    curve = json.loads((runs / "source" / "evaluations.json").read_text())
    assert record["status"] == "finished" and [p["step"] for p in curve] == list(range(0, 6145, 512))
    print("train:", counts)

    transfer = _cli(
        "transfer", "cartpole/transfer", "--source", str(runs / "source"), "--name", "target", *common
    )
    counts = _campaign(
        transfer,
        _cli("transfer", "--resume", str(runs / "target"), "--no-progress"),
        rng,
        (2.5, 9.0),
        lambda: None,
    )
    record = json.loads((runs / "target" / "run.json").read_text())
    curve = json.loads((runs / "target" / "evaluations.json").read_text())
    assert record["status"] == "finished" and record["frozen_unchanged"] is True
    assert [p["step"] for p in curve] == list(range(0, 6145, 512))  # no evaluation lost or doubled
    print("transfer:", counts)


def test_study_and_tune_never_redo_a_finished_run(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    runs = tmp_path / "runs"
    tiny = {"n_steps": 32, "batch_size": 64, "n_epochs": 2}
    agent = {"algo": "ppo", "hyperparams": tiny, "policy": {"hidden": [16, 16]}}
    source = {"name": "source", "budget": 1024, "env": {"id": "rltransfer/CartPole-v1", "n_envs": 2},
              "eval": {"every": 512, "episodes": 2, "patience": None}, "agent": agent}  # fmt: skip
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(source))
    study = {"name": "study", "log_root": str(runs), "device": "cpu",
             "source": {"config": str(tmp_path / "source.yaml")},
             "targets": [{"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}],
             "strategies": ["scratch", "finetune"], "seeds": 3, "budget": 2048,
             "eval": {"every": 512, "episodes": 2}, "execution": {"workers": 1}}  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    counts = _campaign(
        _cli("study", str(tmp_path / "study.yaml"), "--no-progress"),
        _cli("study", "--resume", str(runs / "study"), "--no-progress"),
        rng, (3.0, 12.0), _never_redone(runs / "study"),
    )  # fmt: skip
    assert (
        len(list((runs / "study" / "runs").rglob("result.json"))) == 6
        and (runs / "study" / "report.md").exists()
    )
    print("study:", counts)

    tune = {"name": "tune", "log_root": str(runs), "device": "cpu", "source": {"path": str(runs / "study" / "source")},
            "target": {"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}, "budget": 1024,
            "eval": {"every": 512, "episodes": 2}, "agent": agent, "trials": 3, "trial_seeds": [100],
            "confirm_seeds": [0, 1], "pruner": {"kind": "none"}, "execution": {"workers": 1}}  # fmt: skip
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune))
    counts = _campaign(
        _cli("tune", str(tmp_path / "tune.yaml")), _cli("tune", "--resume", str(runs / "tune")),
        rng, (3.0, 12.0), _never_redone(runs / "tune"),
    )  # fmt: skip
    import optuna

    storage = f"sqlite:///{runs / 'tune' / 'tune.db'}"
    for arm in ("transfer", "scratch"):
        trials = optuna.load_study(study_name=f"tune-{arm}", storage=storage).get_trials(deepcopy=False)
        assert (
            sum(t.state.name == "COMPLETE" for t in trials) == 3
        )  # interrupted ones ran again, nothing extra
    assert (runs / "tune" / "tune.md").exists() and (runs / "tune" / "best-transfer.yaml").exists()
    print("tune:", counts)


def test_image_transfer_killed_repeatedly_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("torchvision", reason="the vision extra is part of the test install (see README)")
    rng = random.Random(SEED + 2)
    common = ["--device", "cpu", "--no-progress", "--set", "checkpoint_seconds=0",
              "--set", "source.stages=[{name: s, train: ['*'], epochs: 12, lr: 0.003}]",
              "--set", "stages=[{name: head, train: [head], epochs: 8, lr: 0.003}, {name: all, train: ['*'], epochs: 8, lr: 0.001}]",
              "--set", "baseline.stages=[{name: scratch, train: ['*'], epochs: 8, lr: 0.003}]"]  # fmt: skip
    straight = tmp_path / "straight"
    assert _run(_cli("image", "images/digits", "--log-root", str(straight), *common), None)[0] == 0
    killed = tmp_path / "killed"
    counts = _campaign(
        _cli("image", "images/digits", "--log-root", str(killed), *common),
        _cli("image", "--resume", str(killed / "digits"), "--no-progress"),
        rng, (3.0, 10.0), lambda: None,
    )  # fmt: skip
    for name in ("model/model.pt", "source-model/model.pt"):
        ours, theirs = (torch.load(root / "digits" / name, weights_only=True) for root in (killed, straight))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    report = [json.loads((root / "digits" / "report.json").read_text()) for root in (killed, straight)]
    assert [p["accuracy"] for p in report[0]["phases"]] == [p["accuracy"] for p in report[1]["phases"]]
    print("image:", counts)
