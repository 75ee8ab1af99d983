#!/usr/bin/env bash
# GPU figures, once, on a machine with an NVIDIA GPU: ONNX Runtime's CUDA provider against the
# CPU provider for every model, and nvImageCodec's JPEG 2000 decode against ours, written to
# benchmarks/results/gpu.json with the GPU named. Never mixed into the CPU table (BENCHMARKS.md).
#
#   bash benchmarks/gpu.sh             # from the repository root
#   WHEELS=/path/to/wheels bash benchmarks/gpu.sh   # offline: install from a wheel folder
#
# It builds its own environment (.venv-gpu) so the CPU .venv stays as it is; the CPU path
# remains the default everywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! nvidia-smi --query-gpu=name --format=csv,noheader >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU here (nvidia-smi found none); nothing to measure" >&2
  exit 2
fi
PY=${PYTHON:-python3}
VENV=${GPU_VENV:-.venv-gpu}
PIP_ARGS=(--quiet)
if [[ -n "${WHEELS:-}" ]]; then PIP_ARGS+=(--no-index --find-links "$WHEELS"); fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install "${PIP_ARGS[@]}" -e .
# onnxruntime and onnxruntime-gpu install the same module: the CPU build goes first
"$VENV/bin/pip" uninstall --quiet -y onnxruntime
"$VENV/bin/pip" install "${PIP_ARGS[@]}" "onnxruntime-gpu[cuda,cudnn]" \
  || "$VENV/bin/pip" install "${PIP_ARGS[@]}" onnxruntime-gpu
"$VENV/bin/pip" install "${PIP_ARGS[@]}" nvidia-nvimgcodec-cu12 \
  || echo "gpu.sh: nvImageCodec did not install; the GPU decode figure is left out" >&2
"$VENV/bin/python" -m benchmarks.gpu "$@"
