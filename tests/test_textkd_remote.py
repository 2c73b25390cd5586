"""OpenAITeacher against a scripted fake OpenAI server on 127.0.0.1 (no network; file < 10 s)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from distill.core.errors import ConfigError
from distill.teachers.remote import OpenAITeacher
from distill.teachers.text import Sampling, TeacherUnavailable

KEY_ENV = "DISTILL_TEST_OPENAI_KEY"
KEY = "sk-test-SECRET-0123456789"
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
LOGPROBS = [{"token": "4", "logprob": -0.1, "top_logprobs": [{"token": "4", "logprob": -0.1}]}]


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    sleep_s: float = 0.0


def completion(n: int = 1, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A chat completion with `n` choices; choice i answers "answer i" with logprobs."""
    choices = [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
                "finish_reason": "length" if i else "stop", "logprobs": {"content": LOGPROBS}}
               for i in range(n)]
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


class FakeOpenAI:
    """Records every request; `script(attempt_number, request) -> Reply` decides each answer."""

    def __init__(self) -> None:
        self.script: Callable[[int, dict[str, Any]], Reply] = lambda i, r: Reply(body=completion())
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a handler still sleeping must not hold up teardown
        self.httpd.handle_error = lambda request, address: None  # client hung up: expected here
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def attempts(self) -> int:
        return len(self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = {"path": self.path, "headers": dict(self.headers),
                           "json": json.loads(raw), "t": time.monotonic()}
                with fake._lock:
                    fake.requests.append(request)
                    number = len(fake.requests)
                reply = fake.script(number, request)
                if reply.sleep_s and fake.stop.wait(reply.sleep_s):
                    return
                body = reply.body
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def teacher(base_url: str, **kwargs: Any) -> OpenAITeacher:
    options: dict[str, Any] = {"api_key_env": KEY_ENV, "timeout_s": 5.0, "max_retries": 3,
                               "backoff_s": 0.01}
    return OpenAITeacher(base_url, "teacher-7b", **{**options, **kwargs})


def test_success_parses_choices_usage_and_logprobs(server, api_key):
    server.script = lambda i, r: Reply(body=completion(n=2, usage={"prompt_tokens": 5,
                                                                   "completion_tokens": 7}))
    out = teacher(server.base_url).complete(MESSAGES, Sampling(n=2, top_logprobs=3, seed=7))

    assert [c.text for c in out] == ["answer 0", "answer 1"]
    assert [c.finish_reason for c in out] == ["stop", "length"]
    assert [c.prompt_tokens for c in out] == [5, 5]
    assert [c.completion_tokens for c in out] == [4, 3]  # the total, split evenly across choices
    assert all(c.logprobs == LOGPROBS for c in out)
    assert all(0 < c.latency_s < 5 for c in out)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["json"] == {"model": "teacher-7b", "messages": MESSAGES, "max_tokens": 128,
                               "temperature": 0.0, "top_p": 1.0, "n": 2, "seed": 7,
                               "logprobs": True, "top_logprobs": 3}


def test_logprobs_and_seed_sent_only_when_asked_and_no_key_means_no_auth(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)  # a local server needs no key: not an error
    server.script = lambda i, r: Reply(body={"choices": [{"message": {"content": None}}]})
    [out] = teacher(server.base_url).complete(MESSAGES, Sampling(max_tokens=9))

    assert (out.text, out.prompt_tokens, out.completion_tokens, out.logprobs) == ("", 0, 0, None)
    request = server.requests[0]
    assert "Authorization" not in request["headers"]
    assert request["json"]["max_tokens"] == 9
    assert not {"logprobs", "top_logprobs", "seed"} & set(request["json"])


def test_429_with_retry_after_is_retried_until_success(server, api_key):
    slow_down = Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
    server.script = lambda i, r: slow_down if i <= 2 else Reply(body=completion())
    [out] = teacher(server.base_url).complete(MESSAGES, Sampling())
    assert out.text == "answer 0"
    assert server.attempts == 3


def test_bounded_retries_name_the_url_and_never_the_key(server, api_key):
    # The server echoes the credentials back: they must still not reach the message.
    server.script = lambda i, r: Reply(500, {"error": {"message": r["headers"]["Authorization"]}})
    with pytest.raises(TeacherUnavailable) as info:
        teacher(server.base_url, max_retries=2).complete(MESSAGES, Sampling())
    message = str(info.value)
    assert server.attempts == 3
    assert f"{server.base_url}/chat/completions" in message
    assert "3 attempt" in message and "HTTP 500" in message and "distill serve" in message
    assert KEY not in message


def test_garbage_is_retried_then_reported(server, api_key):
    server.script = lambda i, r: (Reply(body=b"\xff\x00<html>oops") if i == 1 else
                                  Reply(body={"object": "chat.completion"}) if i == 2 else
                                  Reply(body=completion()))
    assert teacher(server.base_url).complete(MESSAGES, Sampling())[0].text == "answer 0"
    assert server.attempts == 3

    server.requests.clear()
    server.script = lambda i, r: Reply(body=b"not json at all")
    with pytest.raises(TeacherUnavailable, match="not JSON"):
        teacher(server.base_url, max_retries=1).complete(MESSAGES, Sampling())
    assert server.attempts == 2


def test_400_is_not_retried_and_shows_the_server_error(server, api_key):
    error = {"error": {"message": "max_tokens is too large: 99999"}}
    server.script = lambda i, r: Reply(400, error)
    with pytest.raises(TeacherUnavailable, match="max_tokens is too large: 99999") as info:
        teacher(server.base_url).complete(MESSAGES, Sampling(max_tokens=99999))
    assert server.attempts == 1
    assert "HTTP 400" in str(info.value) and server.base_url in str(info.value)


def test_401_names_the_env_var_not_the_key(server, api_key):
    server.script = lambda i, r: Reply(401, {"error": {"message": "invalid api key"}})
    with pytest.raises(TeacherUnavailable, match="refused the credentials") as info:
        teacher(server.base_url).complete(MESSAGES, Sampling())
    assert server.attempts == 1
    assert KEY_ENV in str(info.value) and KEY not in str(info.value)


def test_connection_refused_fails_quickly(api_key):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="4 attempt") as info:
        teacher(url).complete(MESSAGES, Sampling())
    assert time.monotonic() - start < 2.0
    assert f"{url}/chat/completions" in str(info.value)


def test_timeout_is_honoured(server, api_key):
    server.script = lambda i, r: Reply(body=completion(), sleep_s=3.0)
    start = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="timeout_s=0.2"):
        teacher(server.base_url, timeout_s=0.2, max_retries=1).complete(MESSAGES, Sampling())
    assert time.monotonic() - start < 1.5
    assert server.attempts == 2


def test_rate_limit_spaces_request_starts_across_threads(server, api_key):
    shared = teacher(server.base_url, requests_per_s=20)
    threads = [threading.Thread(target=shared.complete, args=(MESSAGES, Sampling()))
               for _ in range(5)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.attempts == 5
    assert time.monotonic() - start >= 0.19  # 5 starts, 0.05 s apart
    arrivals = sorted(r["t"] for r in server.requests)
    assert arrivals[-1] - arrivals[0] >= 0.15  # spread at the server too, with room for jitter


def test_identity_and_repr_hold_no_key(api_key):
    shared = teacher("http://127.0.0.1:1/v1")
    assert shared.identity == {"backend": "openai", "base_url": "http://127.0.0.1:1/v1",
                               "model": "teacher-7b"}
    assert KEY not in repr(shared) and KEY not in json.dumps(shared.identity)


def test_retry_after_is_capped_and_backoff_grows():
    shared = teacher("http://127.0.0.1:1/v1", backoff_s=1.0)
    assert shared._delay(0, retry_after_s=3600) == 60.0
    assert 0.5 <= shared._delay(0, None) <= 1.5 and 4.0 <= shared._delay(3, None) <= 12.0


@pytest.mark.parametrize("bad", [{"base_url": "127.0.0.1:8000/v1"}, {"timeout_s": 0},
                                 {"requests_per_s": -1}, {"max_retries": -1}])
def test_bad_settings_name_the_field(bad):
    options = {"base_url": "http://127.0.0.1:1/v1", **bad}
    with pytest.raises(ConfigError, match=next(iter(bad))):
        teacher(**options)


def test_the_key_file_is_sent_and_a_rejected_one_is_named_not_shown(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    teacher(server.base_url, api_key_env=None, api_key_file=path).complete(MESSAGES, Sampling())
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    server.script = lambda i, r: Reply(401, {"error": {"message": f"bad key {KEY}"}})
    with pytest.raises(TeacherUnavailable, match="refused the credentials") as info:
        teacher(server.base_url, api_key_env=None, api_key_file=path).complete(MESSAGES, Sampling())
    assert str(path) in str(info.value) and KEY not in str(info.value)
