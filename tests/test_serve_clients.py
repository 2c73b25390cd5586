"""`distill serve` under real clients: the official `openai` client on both endpoints, stop
sequences, refused fields and models, clients that leave, short requests beside long ones."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from test_serve import chat, expected, model_dir, post  # noqa: E402,F401  (model_dir: shared fixture)

from distill.serve import server as serve  # noqa: E402


LONG = "darkness was upon the face"  # the tiny model's answer to it runs to any max_tokens


@pytest.fixture(scope="module")
def server(model_dir):  # noqa: F811
    srv = serve.make_server(str(model_dir), port=0, max_tokens_limit=200, max_batch=4)
    srv.start_background()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def slow_steps(server, monkeypatch):
    """Each decode step takes at least 20 ms, so a long answer lasts long enough to be left or joined;
    returns the jobs the engine is given."""
    jobs, real_decode, real_submit = [], server.engine._decode, server.engine.submit

    def decode(batch):
        time.sleep(0.02)
        real_decode(batch)

    def submit(*args, **kw):
        jobs.append(real_submit(*args, **kw))
        return jobs[-1]

    monkeypatch.setattr(server.engine, "_decode", decode)
    monkeypatch.setattr(server.engine, "submit", submit)
    return jobs


def open_stream(server, max_tokens=150):
    """A streaming chat request whose first text piece has arrived (so its job is decoding)."""
    conn = http.client.HTTPConnection(*server.address, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat(LONG, max_tokens=max_tokens, stream=True)),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    while b'"delta": {"content"' not in resp.readline():
        pass
    return conn, resp


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_openai_client_chats_streams_and_completes(server, client):
    _, g, text = expected(server, "In the beginning God", 10)
    answer = client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=10,
                                            messages=[{"role": "user", "content": "In the beginning God"}])
    assert answer.choices[0].message.content == text and answer.usage.completion_tokens == len(g.token_ids)
    stream = client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=10,
                                            stream=True,
                                            messages=[{"role": "user", "content": "In the beginning God"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    prompt = server.tokenizer("And God said", add_special_tokens=False)["input_ids"]
    alone = expected_text(server, prompt, 8)
    done = client.completions.create(model=server.model_name, prompt="And God said", max_tokens=8,
                                     temperature=0, logprobs=2)
    assert done.object == "text_completion" and done.choices[0].text == alone
    assert len(done.choices[0].logprobs.tokens) == done.usage.completion_tokens
    assert all(len(top) == 2 for top in done.choices[0].logprobs.top_logprobs)
    streamed = client.completions.create(model=server.model_name, prompt="And God said", max_tokens=8,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == alone
    two = client.completions.create(model=server.model_name, prompt=["And God said", prompt],
                                    max_tokens=8, temperature=0)
    assert [c.text for c in two.choices] == [alone, alone] and two.usage.prompt_tokens == 2 * len(prompt)


def expected_text(server, prompt, max_tokens):
    from distill.models.generation import GenerationParams, generate_batch

    g = generate_batch(server.engine.model, [prompt], [GenerationParams(max_new_tokens=max_tokens)],
                       pad_id=server.engine.pad_id, eos_ids=server.engine.eos_ids)[0]
    return server.tokenizer.decode(g.token_ids, skip_special_tokens=True)


def test_echo_scores_the_prompt_as_the_model_does(server, client):
    import torch

    prompt = server.tokenizer("And God said Let there be light", add_special_tokens=False)["input_ids"]
    scored = client.completions.create(model=server.model_name, prompt=prompt, echo=True, max_tokens=0, logprobs=3,
                                       extra_body={"return_tokens_as_token_ids": True})
    (choice,) = scored.choices
    lp = choice.logprobs
    assert choice.text == server.tokenizer.decode(prompt) and scored.usage.completion_tokens == 0
    assert lp.tokens == [f"token_id:{i}" for i in prompt] and lp.token_logprobs[0] is None
    with torch.no_grad():
        expected = torch.log_softmax(server.engine.model(input_ids=torch.tensor([prompt])).logits[0, :-1], -1)
    for t in range(1, len(prompt)):
        assert lp.token_logprobs[t] == pytest.approx(float(expected[t - 1, prompt[t]]), abs=1e-4)
        best = max(lp.top_logprobs[t], key=lp.top_logprobs[t].get)
        assert best == f"token_id:{int(expected[t - 1].argmax())}" and len(lp.top_logprobs[t]) == 3
    both = client.completions.create(model=server.model_name, prompt="And God said", echo=True, max_tokens=4,
                                     temperature=0, logprobs=1)
    assert both.choices[0].text.startswith("And God said") and both.usage.completion_tokens == 4
    n_prompt = len(server.tokenizer("And God said", add_special_tokens=False)["input_ids"])
    assert len(both.choices[0].logprobs.tokens) == n_prompt + 4


def test_stop_sequences_end_the_answer_before_them(server, client):
    _, _, text = expected(server, "darkness was upon the face", 30)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip() and text.index(stop) > 0
    kw = dict(model=server.model_name, temperature=0, max_tokens=30, stop=[stop, "never-said-stop"],
              messages=[{"role": "user", "content": "darkness was upon the face"}])
    answer = client.chat.completions.create(**kw)
    assert answer.choices[0].message.content == text[:text.index(stop)]
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens < 30
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_unknown_model_is_404_and_unsupported_fields_are_400(server, client):
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert info.value.code == "model_not_found" and server.model_name in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve(server.model_name).id == server.model_name
    refused = [dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
               dict(response_format={"type": "json_object"}), dict(presence_penalty=0.5),
               dict(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
               dict(extra_body={"guided_json": {}})]
    for extra in refused:
        kw = {"model": server.model_name, "messages": messages, "max_tokens": 2, **extra}
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**kw)
        field = next(k for k in extra if k != "extra_body") if "extra_body" not in extra else "guided_json"
        assert field.split("s=")[0] in info.value.message or "role" in info.value.message
    ok = client.chat.completions.create(model=server.model_name, messages=messages, max_tokens=2,
                                        presence_penalty=0, user="someone")  # neutral values pass
    assert ok.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=server.model_name, prompt="Hi", echo=True, max_tokens=2, stream=True)


def test_a_stream_the_client_leaves_frees_its_row_at_once(server, slow_steps):
    conn, _ = open_stream(server)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    (job,) = slow_steps
    result = job.result(timeout=5)  # 150 steps would take at least 3 s
    assert result.finish_reason == "abort" and len(result.token_ids) < 150
    wait_until(lambda: server.engine.running == 0, 5)


def test_a_whole_answer_the_client_leaves_is_aborted_too(server, slow_steps):
    body = json.dumps(chat(LONG, max_tokens=150)).encode()
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: slow_steps and server.engine.running == 1)
    result = slow_steps[0].result(timeout=5)
    assert result.finish_reason == "abort" and len(result.token_ids) < 150


def test_a_short_request_is_not_stuck_behind_a_long_stream(server, slow_steps):
    conn, resp = open_stream(server)
    status, body = post(f"{server.url}/v1/chat/completions", chat("Let there be light", max_tokens=3))
    long_job = slow_steps[0]
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert not long_job.done()  # answered while the long one was still decoding
    text = resp.read().decode()  # the long stream goes on to its end, unharmed
    assert text.rstrip().endswith("data: [DONE]") and long_job.result().finish_reason in ("length", "stop")
    conn.close()
    _, g, plain = expected(server, LONG, 150)
    pieces = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    rest = "".join(p["choices"][0]["delta"].get("content", "") for p in pieces if p["choices"])
    assert plain.endswith(rest) and len(rest) < len(plain)  # the first piece was read by open_stream


def test_shutdown_ends_running_streams_with_an_error_event(model_dir):  # noqa: F811
    srv = serve.make_server(str(model_dir), port=0, max_tokens_limit=200)
    srv.start_background()
    real = srv.engine._decode
    srv.engine._decode = lambda batch: (time.sleep(0.02), real(batch))
    conn, resp = open_stream(srv)
    closer = threading.Thread(target=srv.shutdown)
    closer.start()
    text = resp.read().decode()
    closer.join(15)
    assert not closer.is_alive() and "shutting down" in text and "[DONE]" not in text


def test_monitor_compares_served_answers_with_recorded_ones(server, client, tmp_path, capsys):
    from distill.cli import main

    prompts = ["In the beginning God", "Let there be light", "the waters", "God saw the light"]
    live = [client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": p}]).choices[0].message.content
            for p in prompts]
    recorded = live[:2] + ["something else entirely", "nothing like it"]  # the last window drifted
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": r}]}) + "\n"
                            for p, r in zip(prompts, recorded)))
    code = main(["monitor", "--recorded", str(path), "--endpoint", f"{server.url}/v1", "--sample", "1",
                 "--window", "2", "--min-f1", "0.5", "--max-tokens", "12", "--json"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 3, captured.err
    assert [r["alert"] for r in rows] == [False, True]
    assert rows[0]["exact"] == 1.0 and rows[0]["f1"] == 1.0 and rows[1]["f1"] < 0.5
