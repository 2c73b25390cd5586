"""Fake text teachers for the teacher-generated-data tests: deterministic, thread-safe, no model."""

from __future__ import annotations

import re
import threading
import time

from distill.teachers.text import Completion, Sampling, TeacherUnavailable


class EchoTeacher:
    """Answers "Reason: about <topic>.\\nAnswer: <topic>", the topic read from "Topic: X" in the prompt.

    `fail_after`: raise TeacherUnavailable from that call on; `delay_s`: sleep per call.
    """

    def __init__(self, fail_after: int | None = None, delay_s: float = 0.0, wrong_every: int = 0):
        self.calls = 0
        self.fail_after = fail_after
        self.delay_s = delay_s
        self.wrong_every = wrong_every
        self._lock = threading.Lock()

    @property
    def identity(self) -> dict:
        return {"backend": "echo", "model": "echo-1"}

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> list[Completion]:
        with self._lock:
            self.calls += 1
            call = self.calls
        if self.fail_after is not None and call > self.fail_after:
            raise TeacherUnavailable("http://fake/v1/chat/completions did not answer after 3 attempts")
        time.sleep(self.delay_s)
        return [Completion(text=reply(messages[-1]["content"], wrong=bool(self.wrong_every and call % self.wrong_every == 0)),
                           finish_reason="stop", prompt_tokens=10, completion_tokens=5, latency_s=0.01)
                for _ in range(sampling.n)]


def reply(prompt: str, wrong: bool = False) -> str:
    found = re.search(r"Topic:\s*(\w+)", prompt)
    topic = found.group(1) if found else "unknown"
    return f"Reason: it is about {topic}.\nAnswer: {'nothing' if wrong else topic}"


def start_fake_endpoint():
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering like EchoTeacher; returns (server, url)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = reply(body["messages"][-1]["content"])
            out = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
