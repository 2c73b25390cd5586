"""The continuous-batching engine on a tiny random Llama: requests join and leave the running
batch between steps, and every row gives the tokens it gives alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("transformers")

from test_generation import GREEDY, single, tiny_lm  # noqa: E402

from distill.models import batching  # noqa: E402
from distill.models.batching import BatchedGenerator  # noqa: E402
from distill.models.generation import GenerationParams, GeneratorClosed  # noqa: E402

LONG = GenerationParams(max_new_tokens=40)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_lm(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def engine_of(lm):
    engines = []

    def make(**kw):
        model, tok, _ = lm
        engines.append(BatchedGenerator(model, tok, **kw))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def test_concurrent_callers_each_get_the_tokens_they_get_alone(lm, engine_of):
    model, tok, prompts = lm
    expected = [single(model, tok, p).token_ids for p in prompts]
    engine = engine_of(max_batch=8)
    jobs = [engine.submit(p, GREEDY) for p in prompts * 2]
    assert [j.result(timeout=30).token_ids for j in jobs] == expected * 2
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: engine.submit(p, GREEDY).result(timeout=30).token_ids, prompts * 4))
    assert got == expected * 4


def test_a_request_joins_a_running_one_and_finishes_first_with_its_own_tokens(lm, engine_of):
    model, tok, prompts = lm
    engine = engine_of(max_batch=4)
    order, short = [], {}

    def on_long_token(token):  # the short request arrives while the long one is decoding
        if len(order) == 0 and "job" not in short:
            short["job"] = engine.submit(prompts[1], GenerationParams(max_new_tokens=3))
            short["job"].add_done_callback(lambda _: order.append("short"))

    long_job = engine.submit(prompts[2], LONG, on_token=on_long_token)
    long_job.add_done_callback(lambda _: order.append("long"))
    alone_long = single(model, tok, prompts[2], LONG).token_ids
    alone_short = single(model, tok, prompts[1], GenerationParams(max_new_tokens=3)).token_ids
    assert long_job.result(timeout=60).token_ids == alone_long
    assert short["job"].result(timeout=60).token_ids == alone_short
    assert order == ["short", "long"]  # not stuck behind the 40-token row


def test_an_aborted_job_keeps_its_tokens_and_frees_its_row(lm, engine_of):
    model, tok, prompts = lm
    engine = engine_of()
    seen, gate = [], threading.Event()

    def on_token(token):
        seen.append(token)
        if len(seen) == 3:
            job.abort()
            gate.set()

    job = engine.submit(prompts[0], LONG, on_token=on_token)
    other = engine.submit(prompts[2], GREEDY)
    g = job.result(timeout=30)
    assert gate.is_set() and g.finish_reason == "abort"
    assert g.token_ids == single(model, tok, prompts[0], LONG).token_ids[:len(g.token_ids)]
    assert 3 <= len(g.token_ids) <= 4  # stopped at the next step, not after 40 tokens
    assert other.result(timeout=30).token_ids == single(model, tok, prompts[2]).token_ids


def test_rows_left_behind_shrink_the_cache_to_what_is_still_used(lm, engine_of, monkeypatch):
    model, tok, prompts = lm
    engine = engine_of()
    widths = []
    real = engine._decode

    def spy(batch):
        widths.append((len(batch), batch.mask.shape[1], batch.cache.get_seq_length()))
        real(batch)

    monkeypatch.setattr(engine, "_decode", spy)
    long_prompt = prompts[2] * 3  # the longest prompt leaves first: its padding columns go with it
    jobs = [engine.submit(long_prompt, GenerationParams(max_new_tokens=2)),
            engine.submit(prompts[1], GenerationParams(max_new_tokens=8))]
    for job in jobs:
        job.result(timeout=30)
    assert all(mask == cached for _, mask, cached in widths)
    alone = [w for rows, w, _ in widths if rows == 1]
    assert alone and max(alone) < len(long_prompt)  # the short row no longer carries the long padding
    assert jobs[1].result().token_ids == single(model, tok, prompts[1],
                                                GenerationParams(max_new_tokens=8)).token_ids


def test_a_model_whose_cache_cannot_take_rows_still_answers_everyone(lm, engine_of, monkeypatch):
    model, tok, prompts = lm
    monkeypatch.setattr(batching, "_mergeable", lambda cache: False)
    engine = engine_of()
    expected = [single(model, tok, p).token_ids for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: engine.submit(p, GREEDY).result(timeout=30).token_ids, prompts * 2))
    assert got == expected * 2


def test_a_failed_step_fails_its_own_requests_and_the_engine_carries_on(lm, engine_of, monkeypatch):
    model, tok, prompts = lm
    engine = engine_of()
    real, calls = engine._forward, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(engine, "_forward", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.submit(prompts[0], GREEDY).result(timeout=30)
    assert engine.submit(prompts[0], GREEDY).result(timeout=30).token_ids == \
        single(model, tok, prompts[0]).token_ids


def test_close_fails_running_and_queued_requests_and_is_idempotent(lm):
    model, tok, prompts = lm
    engine = BatchedGenerator(model, tok, max_batch=1)
    started, release = threading.Event(), threading.Event()

    def slow(token):
        started.set()
        release.wait(10)

    running = engine.submit(prompts[0], LONG, on_token=slow)
    assert started.wait(10)
    queued = engine.submit(prompts[1], GREEDY)
    closer = threading.Thread(target=engine.close)
    closer.start()
    release.set()
    closer.join(10)
    for job in (running, queued):
        with pytest.raises(GeneratorClosed):
            job.result(timeout=10)
    with pytest.raises(GeneratorClosed):
        engine.submit(prompts[0], GREEDY)
    engine.close()
    assert not engine._worker.is_alive()


def test_a_broken_stream_callback_fails_nobody(lm, engine_of):
    model, tok, prompts = lm
    engine = engine_of()

    def broken(token):
        raise OSError("client went away")

    job = engine.submit(prompts[0], GREEDY, on_token=broken)
    assert job.result(timeout=30).token_ids == single(model, tok, prompts[0]).token_ids


def test_a_request_left_while_waiting_costs_no_prefill(lm, engine_of, monkeypatch):
    model, tok, prompts = lm
    engine = engine_of(max_batch=1)
    prefills, real = [], engine._prefill
    monkeypatch.setattr(engine, "_prefill", lambda requests: prefills.append(len(requests)) or real(requests))
    gate = threading.Event()
    running = engine.submit(prompts[2], LONG, on_token=lambda t: gate.wait(10))
    waiting = engine.submit(prompts[0], GREEDY)
    waiting.abort()
    gate.set()
    assert waiting.result(timeout=30).finish_reason == "abort" and waiting.result().token_ids == []
    running.result(timeout=30)
    assert prefills == [1]  # the running request's only


def test_a_failed_join_fails_the_rows_it_touched_and_nobody_waits_forever(lm, engine_of, monkeypatch):
    model, tok, prompts = lm
    engine = engine_of()

    def broken(batch, new):
        raise RuntimeError("out of memory while stacking")

    started = threading.Event()
    running = engine.submit(prompts[2], LONG, on_token=lambda t: started.set())
    assert started.wait(10)
    monkeypatch.setattr(engine, "_join", broken)
    joining = engine.submit(prompts[0], GREEDY)
    for job in (running, joining):
        with pytest.raises(RuntimeError, match="out of memory"):
            job.result(timeout=30)


def test_scoring_a_prompt_runs_between_steps_and_leaves_the_batch_alone(lm, engine_of):
    import torch

    model, tok, prompts = lm
    engine = engine_of()
    scored = {}

    def on_token(token):  # a scoring request arrives while the long row decodes
        if "job" not in scored:
            scored["job"] = engine.score(prompts[2], top_k=2)

    long_job = engine.submit(prompts[0], LONG, on_token=on_token)
    assert long_job.result(timeout=30).token_ids == single(model, tok, prompts[0], LONG).token_ids
    result = scored["job"].result(timeout=30)
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=torch.tensor([prompts[2]])).logits[0, :-1], -1)
    assert result.token_logprobs[0] is None and result.top_logprobs[0] == []
    chosen = [float(expected[t, prompts[2][t + 1]]) for t in range(len(prompts[2]) - 1)]
    assert result.token_logprobs[1:] == pytest.approx(chosen, abs=1e-5)
    assert [top[0][0] for top in result.top_logprobs[1:]] == expected.argmax(-1).tolist()
