"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_layer_utilities_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(block for block in blocks if "rltransfer.freeze(policy" in block)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    policy = namespace["policy"]
    assert policy.action_net.out_features == 3
    assert not policy.mlp_extractor.policy_net[0].weight.requires_grad
    trained = {id(p) for group in namespace["optimizer"].param_groups for p in group["params"]}
    assert id(policy.mlp_extractor.policy_net[0].weight) not in trained


def test_readme_image_transfer_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchvision")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(block for block in blocks if "rltransfer.run_image(config, model=MyNet()" in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(example, "README.md", "exec"), namespace)
    result, spec = namespace["result"], namespace["spec"]
    assert spec.arch == "custom:MyNet" and spec.classes == ["5", "6", "7", "8", "9"]
    assert [stage.trainable for stage in result.transfer.stages] == [["out"], ["*"]]
    assert result.scratch is not None and (tmp_path / "runs" / "my-digits" / "report.md").is_file()
