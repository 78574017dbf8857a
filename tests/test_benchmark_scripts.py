"""The prepared GPU check's logic where there is no GPU: it says so, measures the CPU side, checks that `auto`
means the CPU, and fails when a check fails (the heavy measurements replaced by tiny ones)."""

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
