"""The package's layers: each stands only on the ones below it, no module imports in a circle, and the base and
the vision layer load neither Stable-Baselines3 nor (for the base) torchvision."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "rltransfer": REPO / "rltransfer",
    "rltransfer.envs": REPO / "envs",
    "rltransfer.agents": REPO / "agents",
}
# what each layer may import from rltransfer (besides itself)
ALLOWED = {
    "core": {"core"},
    "envs": {"core"},
    "agents": {"core"},
    "rl": {"core", "envs", "agents"},
    "study": {"core", "envs", "agents", "rl"},
    "tune": {"core", "envs", "agents", "rl", "study"},
    "vision": {"core"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[0] in ("envs", "agents", "configs") and package == "rltransfer":
                continue  # (mapped folders are listed under their own package)
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """rltransfer modules imported at module level (TYPE_CHECKING blocks and function bodies left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in [node] if not isinstance(node, ast.Try) else node.body:
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("rltransfer"):
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("rltransfer"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {i for i in _imports(path) if i in modules} - {name} for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_no_module_imports_in_a_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(graph) > 40  # the walk saw the whole package


def test_each_layer_stands_only_on_the_layers_below_it() -> None:
    wrong = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if layer is None:
            continue  # rltransfer/__init__ and the CLI stand on top of everything
        for target in targets:
            other = _layer(target)
            if other is not None and other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_the_base_imports_neither_stable_baselines3_nor_torchvision() -> None:
    loaded = _loaded_after(
        "import rltransfer; from rltransfer.core import config, device, errors, heads, interrupt, io, layers, "
        "optim, record, state"
    )
    assert "rltransfer.core.layers" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("stable_baselines3", "torchvision")}


def test_the_vision_layer_does_not_load_stable_baselines3() -> None:
    pytest.importorskip("torchvision")
    loaded = _loaded_after("import rltransfer.vision.pipeline")
    assert "rltransfer.vision.pipeline" in loaded
    assert not {m for m in loaded if m.startswith("stable_baselines3")}


def test_the_command_line_parses_without_loading_torch() -> None:
    """`rltransfer --help` (and each command's) answers without importing torch, SB3 or pydantic: in well
    under a second, and a Ctrl-C during a command's start-up lands in the CLI's handler, not in an import."""
    loaded = _loaded_after(
        "from rltransfer import cli; parser = cli.build_parser(); parser.format_help(); "
        "[parser.parse_args([command, 'x']) for command in ('train', 'transfer', 'study', 'image', 'layers')]"
    )
    assert "rltransfer.cli" in loaded
    assert not {
        m for m in loaded if m.split(".")[0] in ("torch", "stable_baselines3", "torchvision", "pydantic")
    }
