"""The README's freeze / replace-head example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

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
