#!/usr/bin/env bash
# The GPU check: the GPU-marked tests and a short csm-1b bench on CUDA, written under OUT_DIR.
# Usage: benchmarks/gpu_check.sh OUT_DIR [options]   (options: python -m benchmarks.gpu_check --help)
# Uses the python on PATH (a venv with the project's extras, or the machine's own torch/onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
