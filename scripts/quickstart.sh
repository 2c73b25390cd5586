#!/usr/bin/env bash
# README command 1: set up, then run the built-in default job (MNIST-5k with labels on 10%: teacher, plain student,
# distilled student, report). Extra arguments are passed to `distill run` (e.g. key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/distill run "$@"
