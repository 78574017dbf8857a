"""Benchmark scripts at tiny sizes. The prepared GPU check's logic where there is no GPU: it says so, measures the
CPU side, checks that `auto` means the CPU, and fails when a check fails (the heavy measurements replaced by tiny
ones). The overhead script: both sides do the same work, and its repeats and evaluation setting reach the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytest.importorskip("torchvision")
gpu = pytest.importorskip("gpu", reason="benchmarks/gpu.py ships in the repository")


def _fake_ppo(device: str, steps: int, quick: bool) -> dict:
    return {"case": "minatar-ppo-small-cnn", "device": device, "steps_per_second": 1000.0}


@pytest.mark.parametrize("study_device, exit_code", [("cpu", 0), ("cuda:0", 1)])
def test_without_cuda_the_gpu_check_measures_the_cpu_and_checks_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, study_device: str, exit_code: int
) -> None:
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "nature_cnn_ppo", _fake_ppo)
    monkeypatch.setattr(
        gpu, "study_on_one_device", lambda on_gpu, root, budget: {"devices": [study_device] * 4, "failed": 0}
    )
    out = tmp_path / "gpu.json"
    assert gpu.main(["--quick", "--out", str(out)]) == exit_code
    printed = capsys.readouterr().out
    assert "CUDA: not available; measuring the CPU only" in printed
    results = json.loads(out.read_text())
    assert results["auto"] == "cpu"
    assert [row["device"] for row in results["ppo"]] == ["cpu"]
    assert results["resnet18"][0]["device"] == "cpu" and results["resnet18"][0]["seconds"] > 0  # really ran
    assert results["checks"]["auto picks the CPU (no CUDA here)"] is True
    assert results["checks"]["a study's 4 runs all ran on the CPU"] is (exit_code == 0)
    assert ("FAILED" in printed) is (exit_code == 1)


def test_the_overhead_script_times_the_same_work_on_both_sides(tmp_path: Path) -> None:
    """The plain SB3 script and rltransfer learn bit-identical weights and play the same evaluations (what makes
    their time difference rltransfer's machinery), with rltransfer evaluating one episode after another."""
    overhead = pytest.importorskip("overhead", reason="benchmarks/overhead.py ships in the repository")
    from stable_baselines3 import A2C

    case = dict(overhead.CASES["a2c"], budget=1024, every=512, eval_envs=1)
    overhead.plain_sb3("a2c", case, 3, tmp_path / "plain")
    overhead.with_rltransfer("a2c", case, 3, tmp_path / "ours")
    plain = A2C.load(tmp_path / "plain" / "final_model.zip", device="cpu").policy.state_dict()
    ours = A2C.load(tmp_path / "ours" / "run" / "last_model.zip", device="cpu").policy.state_dict()
    assert plain.keys() == ours.keys() and all(bool((plain[k] == ours[k]).all()) for k in plain)
    config = (tmp_path / "ours" / "run" / "config.yaml").read_text()
    assert "envs: 1\n" in config
    evaluations = json.loads((tmp_path / "ours" / "run" / "evaluations.json").read_text())
    rows = (tmp_path / "plain" / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("eval/mean_reward")
    plain_means = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert plain_means == [e["mean_return"] for e in evaluations if e["step"] > 0]


def test_the_overhead_script_reports_its_repeats_and_evaluation_setting(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
    args = ["--algos", "a2c", "--pairs", "1", "--repeats", "2", "--scale", "0.025", "--eval-envs", "auto"]
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "runs" / "benchmarks" / "overhead.json").read_text())
    row = table["a2c"]
    assert row["repeats"] == 2 and row["eval_envs"] == "auto" and row["steps"] == 1024
    assert row["plain_cpu_s"] > 0 and row["rltransfer_cpu_s"] > 0
    assert done.stdout.count("a2c pair 0:") == 1
