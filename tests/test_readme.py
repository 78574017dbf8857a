"""The Python examples of the README and the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import rltransfer
from rltransfer.core.config import coerce_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _blocks(containing: str, pages: list[Path] = PAGES) -> list[tuple[str, str]]:
    found = []
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            if containing in block:
                found.append((page.name, block))
    return found


def test_every_python_example_is_exercised() -> None:
    every = [
        block for page in PAGES for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    ]
    markers = (
        "rltransfer.freeze(policy",
        "rltransfer.run_image(config, model=MyNet()",
        "rltransfer.run_study(",
        "verdict_rates(8,",
    )
    assert every and all(any(marker in block for marker in markers) for block in every)


def test_power_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    ((page, example),) = _blocks("verdict_rates(8,")
    exec(compile(example, page, "exec"), {})
    share = re.search(r"found in (\d+)% of simulated 8-seed studies", capsys.readouterr().out)
    assert share and int(share.group(1)) >= 80


@pytest.mark.parametrize("page, example", _blocks("rltransfer.freeze(policy"))
def test_layer_utilities_example_runs(page: str, example: str) -> None:
    namespace: dict = {}
    exec(compile(example, page, "exec"), namespace)
    policy = namespace["policy"]
    assert policy.action_net.out_features == 3
    assert not policy.mlp_extractor.policy_net[0].weight.requires_grad
    trained = {id(p) for group in namespace["optimizer"].param_groups for p in group["params"]}
    assert id(policy.mlp_extractor.policy_net[0].weight) not in trained


def test_image_transfer_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchvision")
    ((page, example),) = _blocks("rltransfer.run_image(config, model=MyNet()")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(example, page, "exec"), namespace)
    result, spec = namespace["result"], namespace["spec"]
    assert spec.arch == "custom:MyNet" and spec.classes == ["5", "6", "7", "8", "9"]
    assert [stage.trainable for stage in result.transfer.stages] == [["out"], ["*"]]
    assert result.scratch is not None and (tmp_path / "runs" / "my-digits" / "report.md").is_file()


@pytest.mark.slow
def test_pipeline_example_runs_with_tiny_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's pipeline as written, each call's config shrunk to a few hundred steps."""
    ((page, example),) = _blocks("rltransfer.run_study(")
    monkeypatch.chdir(tmp_path)
    tiny = {"budget": 512, "eval": {"every": 256, "episodes": 2}, "log_root": str(tmp_path / "runs")}
    source = coerce_config("cartpole/source", rltransfer.TrainConfig).model_dump(mode="json")
    (tmp_path / "tiny-source.yaml").write_text(yaml.safe_dump({**source, **tiny}))
    calls: list[str] = []

    def shrunk(function: Any, model: type, **more: Any) -> Any:
        def call(config: Any, **kwargs: Any) -> Any:
            calls.append(function.__name__)
            data = {**coerce_config(config, model).model_dump(mode="json"), **tiny, **more}
            return function(data, **kwargs)

        return call

    monkeypatch.setattr(rltransfer, "train", shrunk(rltransfer.train, rltransfer.TrainConfig))
    monkeypatch.setattr(rltransfer, "transfer", shrunk(rltransfer.transfer, rltransfer.TransferConfig))
    study = shrunk(
        rltransfer.run_study,
        rltransfer.StudyConfig,
        seeds=1,
        source={"config": str(tmp_path / "tiny-source.yaml")},
    )
    monkeypatch.setattr(rltransfer, "run_study", lambda config, **kwargs: study(config, workers=1))
    namespace: dict = {"__name__": "__main__"}
    exec(compile(example, page, "exec"), namespace)
    assert calls == ["train", "transfer", "run_study"]
    assert namespace["result"].frozen_unchanged is True
    assert "finetune" in namespace["report"].table
