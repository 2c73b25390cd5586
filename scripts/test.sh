#!/usr/bin/env bash
# README command 2: set up, then run the test suite (fast suite by default; --slow adds the slow one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  bash scripts/get-lm-assets.sh  # SmolLM2 and the KJV Bible for the model-heavy LM tests
  exec .venv/bin/python -m pytest -m "slow or not slow" --timeout 3600 "$@"
fi
exec .venv/bin/python -m pytest "$@"
