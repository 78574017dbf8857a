"""Studies on a real Ray cluster started on loopback: same curves as the local pool, a killed worker's run
retried, Ctrl-C then resume with the other backend, GPUs asked of a GPU-less cluster refused, Ray absent."""

from __future__ import annotations

import glob
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rltransfer.core.errors import ConfigError
from rltransfer.core.interrupt import Interrupted, request_stop
from rltransfer.study import run_study

# Ray is imported by the fixture, after the token is in the environment: Ray reads its auth settings on import
pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="needs the ray extra, which CI installs: pip install -e '.[ray]'",
    ),
    pytest.mark.slow,  # a Ray head and its workers: the fast tier leaves them out
]

SOURCE = {
    "budget": 512,
    "device": "cpu",
    "env": {"id": "rltransfer/CartPole-v1", "n_envs": 4},
    "eval": {"every": 256, "episodes": 2, "patience": None},
    "agent": {
        "algo": "ppo",
        "hyperparams": {"n_steps": 32, "batch_size": 32, "n_epochs": 2},
        "policy": {"hidden": [16, 16]},
    },
}


def _listeners() -> set[tuple[str, int]]:
    """Every listening TCP socket on the machine, (address, port), read from /proc."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            if width == 8:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                ip = socket.inet_ntop(
                    socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                )
            found.add((ip, int(port, 16)))
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback seen through IPv6
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with token authentication and a private temp dir; its address."""
    environment = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray on Linux binds the machine's network address
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the driver (this process) needs the same token
    _reload_auth_settings()
    temp_dir = tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    before = _listeners()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--temp-dir={temp_dir}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        new = _listeners() - before
        assert new, "the Ray head opened no listening socket"
        assert all(_loopback(ip) for ip, _ in new), f"Ray listens beyond loopback: {sorted(new)}"
        yield f"127.0.0.1:{port}"
        leaked = {ip for ip, _ in _listeners() - before if not _loopback(ip)}
        assert not leaked, f"a Ray worker listens beyond loopback: {leaked}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth_settings()


def _reload_auth_settings() -> None:
    """Make this process's Ray read RAY_AUTH_MODE / RAY_AUTH_TOKEN again (it reads them once, on import)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """One source agent trained here, shared by every study of this module (it travels to the workers)."""
    from rltransfer import train

    root = tmp_path_factory.mktemp("ray-source")
    return str(train({**SOURCE, "name": "source", "log_root": str(root)}).run_dir)


def _study(tmp_path: Path, name: str, source: str, **changes) -> dict:
    study = {
        "name": name,
        "log_root": str(tmp_path / "runs"),
        "device": "cpu",
        "source": {"path": source},
        "targets": [{"id": "rltransfer/CartPoleShortPole-v1", "label": "short"}],
        "strategies": ["scratch", "finetune"],
        "seeds": 2,
        "budget": 512,
        "eval": {"every": 256, "episodes": 2},
    }
    study.update(changes)
    return study


def _curves(study_dir: Path) -> dict[str, list]:
    return {
        str(path.parent.relative_to(study_dir)): json.loads(path.read_text())["curve"]
        for path in sorted((study_dir / "runs").rglob("result.json"))
    }


def test_a_study_on_the_cluster_matches_the_local_pool_and_resumes_without_redoing(
    head: str, tmp_path: Path, source: str
) -> None:
    from rltransfer.cli import main

    on_ray = run_study(
        _study(tmp_path, "on-ray", source, execution={"backend": "ray", "address": head}), progress=False
    )
    local = run_study(_study(tmp_path, "local", source, execution={"workers": 2}), progress=False)
    ray_curves, local_curves = _curves(on_ray.study_dir), _curves(local.study_dir)
    assert len(ray_curves) == 4 and ray_curves == local_curves
    # the run came back whole, naming the driver's paths rather than the worker's temporary ones
    run_dir = on_ray.study_dir / "runs" / "short" / "finetune" / "seed0"
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "best_model.zip").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["source"] == str(Path(source) / "best_model.zip")
    assert not list(run_dir.parent.glob(".*"))  # no unpacking leftovers
    # finished on the cluster, resumed with the local pool: nothing runs again
    stamps = {path: path.stat().st_mtime_ns for path in (on_ray.study_dir / "runs").rglob("result.json")}
    assert main(["study", "--resume", str(on_ray.study_dir), "--backend", "local", "--workers", "1"]) == 0
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_a_tuning_runs_its_trials_on_the_cluster(head: str, tmp_path: Path, source: str) -> None:
    """Trials are Ray tasks: they report to the driver's SQLite storage (same machine), their run directories
    come back into the tuning directory, and the best trial is confirmed as a study on the cluster."""
    import optuna

    from rltransfer.tune import run_tune

    report = run_tune(
        {
            "name": "tune-on-ray",
            "log_root": str(tmp_path / "runs"),
            "device": "cpu",
            "source": {"path": source},
            "target": {"id": "rltransfer/CartPoleShortPole-v1", "label": "short"},
            "budget": 512,
            "eval": {"every": 256, "episodes": 2},
            "trials": 2,
            "trial_seeds": [100],
            "confirm_seeds": [0, 1],
            "pruner": {"kind": "median", "startup_trials": 0, "warmup_evals": 0},
            "execution": {"backend": "ray", "address": head},
        }
    )
    tune_dir = report.tune_dir
    study = optuna.load_study(study_name="tune-on-ray-transfer", storage=f"sqlite:///{tune_dir / 'tune.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.intermediate_values for t in trials)  # reported from the workers
    for trial in trials:
        run_dir = tune_dir / "trials" / "transfer" / f"trial{trial.number}" / "seed100"
        assert (run_dir / "evaluations.json").is_file()
        assert str(tune_dir) in (run_dir / "config.yaml").read_text()  # the driver's paths, not the worker's
    assert len(list((tune_dir / "confirm" / "runs").rglob("result.json"))) == 4


def _worker_pids(title: str) -> list[int]:
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if Path(path).read_bytes().startswith(title.encode()):
                pids.append(int(path.split("/")[2]))
        except OSError:
            continue
    return pids


def test_a_killed_worker_has_its_run_retried(head: str, tmp_path: Path, source: str, capsys) -> None:
    killed: list[int] = []

    def kill_one_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = _worker_pids("ray::_remote_run")
            if pids:
                time.sleep(1.0)  # mid-run
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    study = _study(
        tmp_path,
        "killed",
        source,
        strategies=["scratch"],
        seeds=1,
        budget=4096,
        eval={"every": 1024, "episodes": 2},
    )
    study["execution"] = {"backend": "ray", "address": head}
    killer = threading.Thread(target=kill_one_run, daemon=True)
    killer.start()
    report = run_study(study, progress=False)
    killer.join(timeout=5)
    assert killed, "no run was seen on a worker"
    assert report.retried == {"short/scratch/seed0": 1} and not report.failed
    assert "its worker died" in capsys.readouterr().out
    assert "Runs retried after their worker died" in report.report_md.read_text()
    assert json.loads(report.report_json.read_text())["retried"] == {"short/scratch/seed0": 1}
    result = json.loads(
        (report.study_dir / "runs" / "short" / "scratch" / "seed0" / "result.json").read_text()
    )
    assert result["status"] == "finished" and result["curve"][-1][0] >= 4096


def test_ctrl_c_on_the_cluster_brings_checkpoints_back_and_the_local_pool_continues_them(
    head: str, tmp_path: Path, source: str
) -> None:
    from rltransfer.cli import main

    def stop_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 900  # the first checkpoint comes late on loaded cores
        while time.monotonic() < deadline:
            if glob.glob(
                os.path.join(tempfile.gettempdir(), "rltransfer-run-*/runs/*/checkpoint/state.json")
            ):
                request_stop(signal.SIGINT)  # what the driver's Ctrl-C handler does
                return
            time.sleep(0.05)

    study = _study(tmp_path, "stopped", source, seeds=1, budget=6144, eval={"every": 512, "episodes": 2})
    study["execution"] = {"backend": "ray", "address": head}
    stopper = threading.Thread(target=stop_after_a_checkpoint, daemon=True)
    stopper.start()
    with pytest.raises(Interrupted):
        run_study(study, progress=False)
    study_dir = tmp_path / "runs" / "stopped"
    saved = {path.parents[1] for path in study_dir.glob("runs/*/*/*/checkpoint/state.json")}
    assert saved, "no checkpoint came back from the cluster"
    assert main(["study", "--resume", str(study_dir), "--backend", "local", "--workers", "1"]) == 0
    for run in saved:
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "finished" and record["resumed_from"] > 0


def test_gpus_asked_of_a_cluster_without_them_are_refused_before_anything_starts(
    head: str, tmp_path: Path, source: str
) -> None:
    study = _study(
        tmp_path, "gpus", source, execution={"backend": "ray", "address": head, "gpus_per_run": 0.25}
    )
    with pytest.raises(ConfigError, match=r"gpus_per_run.*0\.25.*0 GPUs"):
        run_study(study, progress=False)
    assert not (tmp_path / "runs" / "gpus").exists()


def test_the_ray_backend_without_ray_installed_names_the_extra(
    tmp_path: Path, source: str, monkeypatch, capsys
) -> None:
    from rltransfer.cli import main

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(_study(tmp_path, "no-ray", source)))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    assert main(["study", str(tmp_path / "study.yaml"), "--backend", "ray"]) != 0
    error = capsys.readouterr().err
    assert 'pip install "rltransfer[ray]"' in error and "Traceback" not in error
    assert not (tmp_path / "runs" / "no-ray").exists()


def test_execution_keys_of_the_other_backend_are_named() -> None:
    from rltransfer.core.config import parse_config
    from rltransfer.study.config import StudyConfig

    base = {
        "name": "x",
        "source": {"path": "nowhere"},
        "targets": [{"id": "rltransfer/CartPole-v1"}],
        "budget": 100,
        "eval": {"every": 50},
    }
    with pytest.raises(ConfigError, match=r"execution\.address.*backend: ray"):
        parse_config({**base, "execution": {"address": "127.0.0.1:1"}}, StudyConfig)
    with pytest.raises(ConfigError, match=r"execution\.workers.*backend: local"):
        parse_config({**base, "execution": {"backend": "ray", "workers": 2}}, StudyConfig)
    with pytest.raises(ConfigError, match="execution.backend"):
        parse_config({**base, "execution": {"backend": "slurm"}}, StudyConfig)
