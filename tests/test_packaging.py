"""The wheel installs `rltransfer` only (no top-level `envs`/`agents`) and carries every family and config."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_top_level_names_and_contents(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("rltransfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"rltransfer"}
    for folder in ("envs", "agents", "configs"):  # every source folder ships, mapped under rltransfer/
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".yml"):
                assert f"rltransfer/{path.relative_to(REPO).as_posix()}" in names, path
    for path in (REPO / "rltransfer").rglob("*.py"):  # subpackages such as rltransfer/vision ship too
        assert path.relative_to(REPO).as_posix() in names, path
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "rltransfer = rltransfer.cli:main" in entry_points


def test_the_repository_root_is_not_on_the_import_path() -> None:
    import rltransfer.envs

    assert "envs" not in sys.modules and "agents" not in sys.modules
    assert Path(rltransfer.envs.__file__).parent.name == "envs"
