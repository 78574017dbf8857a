#!/usr/bin/env bash
# The GPU check in one prepared script: device auto, PPO (Nature-CNN) and a resnet18 epoch on CPU vs GPU, a
# study with several runs on one GPU. Without CUDA it measures the CPU side and checks that auto means the CPU.
# Usage: bash benchmarks/gpu.sh [--quick] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu.py "$@"
