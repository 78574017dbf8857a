"""Seconds for `rltransfer --help` and each command's --help: the median of 5 fresh processes each.

python benchmarks/cli_speed.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "train", "transfer", "study", "image", "layers", "envs"]


def main() -> None:
    executable = shutil.which("rltransfer")
    base = [executable] if executable else [sys.executable, "-m", "rltransfer.cli"]
    for command in COMMANDS:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(
                [*base, *([command] if command else []), "--help"], capture_output=True, check=True
            )
            times.append(time.perf_counter() - started)
        print(f"rltransfer {command + ' ' if command else ''}--help: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
