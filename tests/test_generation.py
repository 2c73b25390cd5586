"""Batched generation on a tiny random Llama: batching changes nothing but the speed."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import make_llama, make_tokenizer  # noqa: E402

from distill.models.generation import (  # noqa: E402
    GenerationParams,
    eos_ids_of,
    generate_batch,
)

GREEDY = GenerationParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_lm(tmp_path_factory.mktemp("tiny_llama"))


def tiny_lm(directory):
    """(model, tokenizer, prompts of different lengths); weights scaled up so outputs vary by prompt."""
    tok = make_tokenizer(directory)
    model = varied(make_llama(directory, tok)).eval()
    texts = ["In the beginning God", "And", "darkness was upon the face of the deep And God said"]
    return model, tok, [tok(t)["input_ids"] for t in texts]


def varied(model):
    """A random tiny Llama at the default init repeats one token; larger weights make real sequences."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def run(model, tok, prompts, params, **kw):
    kw.setdefault("eos_ids", {tok.eos_token_id})
    return generate_batch(model, prompts, params, pad_id=tok.pad_token_id, **kw)


def single(model, tok, prompt, params=GREEDY, **kw):
    return run(model, tok, [prompt], [params], **kw)[0]


def test_batched_greedy_equals_one_at_a_time_and_hf_generate(lm):
    model, tok, prompts = lm
    alone = [single(model, tok, p).token_ids for p in prompts]
    together = [g.token_ids for g in run(model, tok, prompts, [GREEDY] * len(prompts))]
    assert together == alone
    assert len(set(map(tuple, alone))) == 3 and len(set(alone[0])) > 3  # a meaningful comparison
    reference = model.generate(torch.tensor([prompts[0]]), max_new_tokens=12, do_sample=False,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert reference[0, len(prompts[0]):].tolist() == alone[0]


def test_rows_stop_at_their_own_length_or_eos_and_stream_tokens(lm):
    model, tok, prompts = lm
    free = [single(model, tok, p, GenerationParams(max_new_tokens=10), eos_ids=set()).token_ids
            for p in prompts]
    eos = free[0][3]  # a token row 0 makes at step 3: used as its EOS below
    params = [GenerationParams(max_new_tokens=10), GenerationParams(max_new_tokens=2),
              GenerationParams(max_new_tokens=0)]
    streamed: dict[int, list[int]] = {0: [], 1: [], 2: []}
    out = run(model, tok, prompts, params, eos_ids={eos}, on_token=lambda r, t: streamed[r].append(t))
    first = free[0].index(eos)
    assert out[0].token_ids == free[0][:first] and out[0].finish_reason == "stop"
    expected_1 = free[1][:free[1].index(eos)] if eos in free[1][:2] else free[1][:2]
    assert out[1].token_ids == expected_1
    assert out[2].token_ids == [] and out[2].finish_reason == "length"
    assert [g.prompt_tokens for g in out] == [len(p) for p in prompts]
    assert streamed == {i: g.token_ids for i, g in enumerate(out)}  # EOS is never streamed


def test_seeded_sampling_repeats_whatever_it_is_batched_with(lm):
    model, tok, prompts = lm
    hot = GenerationParams(max_new_tokens=16, temperature=1.5, seed=7)
    a = single(model, tok, prompts[0], hot).token_ids
    b = run(model, tok, prompts, [hot, GREEDY, GenerationParams(max_new_tokens=5, temperature=1.0)])[0]
    other_seed = single(model, tok, prompts[0], GenerationParams(max_new_tokens=16, temperature=1.5, seed=8))
    assert a == b.token_ids
    assert a != other_seed.token_ids
    nucleus_of_one = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=3)
    greedy = single(model, tok, prompts[0]).token_ids
    assert single(model, tok, prompts[0], nucleus_of_one).token_ids == greedy


def test_top_logprobs_are_sorted_log_probabilities_led_by_the_greedy_token(lm):
    model, tok, prompts = lm
    g = single(model, tok, prompts[2], GenerationParams(max_new_tokens=6, top_logprobs=5))
    assert len(g.top_logprobs) == len(g.token_ids) == len(g.token_logprobs) == 6
    for token, chosen, top in zip(g.token_ids, g.token_logprobs, g.top_logprobs):
        assert len(top) == 5
        lps = [lp for _, lp in top]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
        assert sum(math.exp(lp) for lp in lps) <= 1 + 1e-5
        assert top[0][0] == token and chosen == pytest.approx(top[0][1])
    assert single(model, tok, prompts[2]).top_logprobs is None


def test_params_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        GenerationParams(max_new_tokens=1, top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationParams(max_new_tokens=1, temperature=-1)


def test_eos_ids_come_from_the_tokenizer_and_the_generation_config(lm):
    model, tok, _ = lm
    model.generation_config.eos_token_id = [tok.eos_token_id, 5]
    try:
        assert eos_ids_of(model, tok) == {tok.eos_token_id, 5}
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id


def test_a_sampled_token_follows_the_distribution_and_never_has_zero_probability():
    from distill.models.generation import inverse_cdf_sample

    probs = torch.tensor([0.1, 0.0, 0.2, 0.7, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([inverse_cdf_sample(probs, g) for _ in range(20_000)]), minlength=5)
    share = counts.double() / counts.sum()
    assert counts[1] == 0 and counts[4] == 0  # zero-probability tokens, the last one included
    assert torch.allclose(share, probs.double(), atol=0.012)  # ±4 standard errors at 20,000 draws
