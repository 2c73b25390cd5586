"""Endpoint log-probs → a sparse teacher signal for the LM losses."""

from __future__ import annotations

import math

import pytest
import torch
from lm_helpers import make_llama, make_tokenizer

from distill.losses.config import TokenKDConfig
from distill.serve.server import make_server
from distill.teachers.generate import PromptRow, generate, read_records
from distill.teachers.logprobs import topk_blocks
from distill.teachers.remote import OpenAITeacher
from distill.teachers.text import Sampling, chat_prompt_ids
from distill.training.config import LMTrainConfig
from distill.training.lm import fit_lm


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def entry(token: str, lp: float, alts: list[tuple[str, float]]) -> dict:
    return {"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in alts]}


def test_response_tokens_get_the_teachers_topk_at_the_positions_that_predict_them(tok):
    rec = {"messages": [{"role": "user", "content": "God said"}], "response": "Let there",
           "logprobs": [entry("Let", -0.1, [("Let", -0.1), ("And", -2.5)]),
                        entry("there", -0.5, [("there", -0.5)])]}
    blocks, signal, counts = topk_blocks([rec], tok, seq_len=32, k=2)
    assert counts == {"used": 1, "no_logprobs": 0, "unaligned": 0, "too_long": 0}
    p = len(chat_prompt_ids(tok, rec["messages"]))
    ids = tok.convert_tokens_to_ids(["Let", "there", "And"])
    assert blocks.input_ids[0, p: p + 2].tolist() == ids[:2]
    torch.testing.assert_close(blocks.loss_mask[0].nonzero().squeeze(1), torch.tensor([p - 1, p]))
    assert blocks.loss_mask[0].sum().item() == pytest.approx(1.0)
    assert signal.indices[0, p - 1].tolist() == [ids[0], ids[2]]
    torch.testing.assert_close(signal.logprobs[0, p - 1], torch.tensor([-0.1, -2.5]))
    assert signal.tail[0, p - 1, 0].item() == pytest.approx(math.log(1 - math.exp(-0.1) - math.exp(-2.5)))
    assert signal.logprobs[0, p, 1].item() < -1e3  # one alternative only: the second slot is empty


def test_records_that_cannot_be_aligned_are_counted_not_trained(tok):
    good = {"messages": [{"role": "user", "content": "light"}], "response": "God",
            "logprobs": [entry("God", -0.2, [("God", -0.2)])]}
    foreign = {**good, "response": "zebra", "logprobs": [entry("zebra", -0.2, [])]}  # not in the vocabulary
    long = {**good, "messages": [{"role": "user", "content": "light " * 40}]}
    blocks, _, counts = topk_blocks([good, foreign, {**good, "logprobs": None}, long], tok, seq_len=24, k=4)
    assert counts == {"used": 1, "no_logprobs": 1, "unaligned": 1, "too_long": 1} and len(blocks) == 1


def test_served_logprobs_train_a_student_with_forward_kl(tmp_path):
    d = tmp_path / "teacher"
    tok = make_tokenizer(d)
    make_llama(d, tok, layers=2, seed=3)
    server = make_server(str(d), port=0)
    server.start_background()
    try:
        teacher = OpenAITeacher(base_url=f"{server.url}/v1", model=server.model_name, api_key_env=None)
        rows = [PromptRow(id=str(i), messages=[{"role": "user", "content": f"And God {i}"}], fields={})
                for i in range(4)]
        generate(teacher, rows, tmp_path / "g.jsonl", sampling=Sampling(max_tokens=6, top_logprobs=3), quiet=True)
    finally:
        server.shutdown()
    records = read_records(tmp_path / "g.jsonl")
    blocks, signal, counts = topk_blocks(records, tok, seq_len=48, k=3)
    assert counts["used"] == 4
    for i, rec in enumerate(records):  # the chosen (greedy) token is the teacher's top-1 at each position
        p = len(chat_prompt_ids(tok, rec["messages"]))
        n = rec["completion_tokens"]
        assert signal.indices[i, p - 1: p - 1 + n, 0].tolist() == blocks.input_ids[i, p: p + n].tolist()
    student = make_llama(tmp_path / "student", tok, layers=1, seed=4)
    out = fit_lm(student, blocks, train=LMTrainConfig(steps=2, batch_size=2, eval_every=2, warmup_steps=0),
                 kd=TokenKDConfig(ratio=0.5), vocab=len(tok), teacher=signal, device="cpu", quiet=True)
    assert math.isfinite(out.history[-1]["train_kd"]) and out.history[-1]["train_kd"] > 0
