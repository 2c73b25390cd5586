"""An OpenAI-compatible chat-completions server for a Hugging Face causal LM, on the standard library.

    distill serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--api-key-env NAME | --api-key-file PATH]
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: `POST /v1/chat/completions` (JSON, or Server-Sent Events with `stream: true`),
`GET /v1/models`, and `GET /health`, the one endpoint open without the API key. The server listens
on 127.0.0.1 unless told otherwise, and refuses any other address without a key. Concurrent
requests are decoded together by `distill.models.generation.BatchedGenerator`. Errors have OpenAI's
shape, `{"error": {"message", "type", "code"}}`, so OpenAI clients show our message.

One module on purpose (over the 400-line guide): the protocol, its limits and the HTTP plumbing
are read together when checking what a client can make the server do.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from distill.core.credentials import env_key, one_source, open_key_file
from distill.core.errors import DistillError

log = logging.getLogger(__name__)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
ROUTES = {"/v1/chat/completions": {"POST": "_chat"}, "/v1/models": {"GET": "_models"},
          "/health": {"GET": "_health"}}
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)  # client left


class HTTPError(Exception):
    """A refused request, sent to the client as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def _shutting_down() -> HTTPError:
    return HTTPError(503, "The server is shutting down; retry later.", "server_error", "shutting_down")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; `context` is the model's max_position_embeddings (None: unknown)."""

    max_request_bytes: int
    max_tokens: int
    max_n: int
    context: int | None


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completion request, ready for the engine."""

    prompt_ids: list[int]
    params: list[Any]  # one GenerationParams per choice (n)
    stream: bool
    logprobs: bool
    top_logprobs: int
    include_usage: bool


class Server:
    """A model's batching engine and the HTTP server in front of it."""

    def __init__(self, httpd: ThreadingHTTPServer, engine: Any, tokenizer: Any, *, model_name: str,
                 api_key: str | None, limits: Limits):
        self.httpd, self.engine, self.tokenizer = httpd, engine, tokenizer
        self.model_name, self.limits = model_name, limits
        self._key = api_key.encode() if api_key else None
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to share between threads
        self._state = threading.Condition()
        self._inflight, self._connections = 0, set()
        self._serving = self._stopped = False
        self._thread: threading.Thread | None = None
        httpd.app = self  # type: ignore[attr-defined]  # the handlers find the server here

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Answer requests until `shutdown()` is called from another thread."""
        self._serving = True
        self.httpd.serve_forever(poll_interval=0.2)

    def start_background(self) -> threading.Thread:
        self._serving = True
        self._thread = threading.Thread(target=self.serve_forever, name="distill-serve", daemon=True)
        self._thread.start()
        return self._thread

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort running generations (their clients get 503), free the port.

        Idempotent. Aborting rather than finishing bounds the wait: a long generation on a CPU
        can take minutes.
        """
        with self._state:
            if self._stopped:
                return
            self._stopped = True
        if self._serving:
            self.httpd.shutdown()  # returns once the accept loop has stopped
        self.engine.close()
        with self._state:
            self._state.wait_for(lambda: self._inflight == 0, timeout)
            for conn in self._connections:  # idle keep-alive connections: wake their threads
                _close_quietly(conn)
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    def check_key(self, header: str | None) -> None:
        if self._key is None:
            return
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise HTTPError(401, "Missing or wrong API key: send `Authorization: Bearer KEY` with the key "
                            "the server was started with (--api-key-env/--api-key-file).", "authentication_error",
                            "invalid_api_key")

    def track(self, delta: int) -> None:
        """Count requests in flight, which `shutdown` waits for; refuse new ones once stopping."""
        with self._state:
            if delta > 0 and self._stopped:
                raise _shutting_down()
            self._inflight += delta
            self._state.notify_all()

    def connection(self, conn: socket.socket, opened: bool) -> None:
        with self._state:
            (self._connections.add if opened else self._connections.discard)(conn)


def make_server(model_dir_or_source: str, *, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None, max_request_bytes: int = 1_000_000,
                max_tokens_limit: int = 512, max_batch: int = 8, model_name: str | None = None) -> Server:
    """Bind `host:port` (0 = any free port), then load the model (a directory, hub id or `builtin:`).

    An address other machines can reach needs `api_key`: the server would otherwise answer anyone.
    """
    if not _is_loopback(host) and not api_key:
        raise DistillError(f"Refusing to serve on {host}, which other machines can reach, without an API key: "
                           "require one with --api-key-env NAME or --api-key-file PATH, or keep the default "
                           "--host 127.0.0.1.")
    from distill.models.causal_lm import load_causal_lm, load_tokenizer
    from distill.models.generation import BatchedGenerator

    try:  # bind first: a busy port should not cost a model load
        httpd = _HTTPServer((host, port), _Handler)
    except OSError as exc:
        raise DistillError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another "
                           "--port or --host, or stop the process using it.") from None
    try:
        tokenizer = load_tokenizer(model_dir_or_source, key="MODEL_DIR")
        model = load_causal_lm(model_dir_or_source, key="MODEL_DIR").eval()
    except BaseException:
        httpd.server_close()
        raise
    source = Path(model_dir_or_source)
    name = model_name or (source.name if source.is_dir() else model_dir_or_source)
    limits = Limits(max_request_bytes, max_tokens_limit, max_batch,
                    getattr(model.config, "max_position_embeddings", None))
    engine = BatchedGenerator(model, tokenizer, max_batch=max_batch)
    return Server(httpd, engine, tokenizer, model_name=name, api_key=api_key, limits=limits)


def run(model_dir: str, *, host: str, port: int, api_key_env: str | None = None,
        api_key_file: Path | None = None, **limits: Any) -> int:
    """`distill serve`: serve until Ctrl-C or SIGTERM, then shut down cleanly."""
    api_key = _server_key(api_key_env, api_key_file)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = make_server(model_dir, host=host, port=port, api_key=api_key, **limits)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start_background()
        print(f"Serving {server.model_name} at {server.url}/v1 (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        signal.signal(signal.SIGTERM, previous)
    print("Server stopped.", file=sys.stderr)
    return 0


def _server_key(env: str | None, file: Path | None) -> str | None:
    """The key clients must send: from environment variable `env` or from `file` (one of them), or None."""
    one_source(env, file, "--api-key-env", "--api-key-file")
    if file is not None:
        return open_key_file(file, "--api-key-file")
    return env_key(env, "--api-key-env") if env else None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _close_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # `shutdown` waits for requests in flight, never for idle connections

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:  # an IPv6 literal
            self.socket.close()
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()


# --------------------------------------------------------------------------- requests


def parse_chat(body: bytes, app: Server) -> ChatRequest:
    """Validate a chat-completion body and tokenize its messages; HTTPError(400) says what to fix."""
    from distill.models.generation import GenerationParams

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise HTTPError(400, f"The request body is not valid JSON ({exc}); send an object such as "
                        '{"messages": [{"role": "user", "content": "Hello"}]}.') from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    messages = _messages(data.get("messages"))
    if data.get("stop"):
        raise HTTPError(400, "`stop` sequences are not supported by distill serve; leave out `stop`.",
                        code="stop")
    max_tokens = _number(data, "max_completion_tokens", int, 1) or _number(data, "max_tokens", int, 1)
    if max_tokens is not None and max_tokens > app.limits.max_tokens:
        raise HTTPError(400, f"max_tokens={max_tokens} is above this server's limit of "
                        f"{app.limits.max_tokens}; ask for fewer, or restart the server with a larger "
                        "--max-tokens.", code="max_tokens")
    temperature = _number(data, "temperature", float, 0, 2, default=1.0)
    top_p = _number(data, "top_p", float, 0, 1, default=1.0)
    if top_p == 0:
        raise HTTPError(400, "`top_p` must be above 0; for greedy decoding set temperature to 0.",
                        code="top_p")
    n = _number(data, "n", int, 1, app.limits.max_n, default=1)
    seed = _number(data, "seed", int, -(2**63), 2**63 - n)  # torch's seed range, for seed + i per choice
    logprobs, stream = _flag(data, "logprobs"), _flag(data, "stream")
    top_logprobs = _number(data, "top_logprobs", int, 0, MAX_TOP_LOGPROBS, default=0)
    if top_logprobs and not logprobs:
        raise HTTPError(400, "`top_logprobs` needs `logprobs: true`.", code="top_logprobs")
    if logprobs and stream:
        raise HTTPError(400, "`logprobs` are not available with `stream: true`; ask without streaming.",
                        code="logprobs")
    prompt = _prompt(app, messages)
    max_tokens = _fit(app, len(prompt), max_tokens)
    params = [GenerationParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                               seed=None if seed is None else seed + i,
                               top_logprobs=max(top_logprobs, 1) if logprobs else 0) for i in range(n)]
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return ChatRequest(prompt, params, stream, logprobs, top_logprobs, include_usage)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise HTTPError(400, '`messages` must be a non-empty list of {"role": ..., "content": ...} '
                        "objects.", code="messages")
    out = []
    for i, m in enumerate(value):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise HTTPError(400, f"messages[{i}] needs a string `role` and a string `content`.",
                            code="messages")
        out.append({"role": m["role"], "content": content})
    return out


def _number(data: dict, key: str, kind: type, low: float | None = None, high: float | None = None,
            default: Any = None) -> Any:
    value = data.get(key)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (isinstance(value, int) or math.isfinite(value))  # JSON may carry NaN and Infinity
    if not ok or (kind is int and value != int(value)) or (low is not None and value < low) \
            or (high is not None and value > high):
        bounds = f" from {low} to {high}" if high is not None else f" >= {low}" if low is not None else ""
        what = "a number" if kind is float else "an integer"
        raise HTTPError(400, f"`{key}` must be {what}{bounds}, got {value!r}.", code=key)
    return kind(value)


def _flag(data: dict, key: str) -> bool:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise HTTPError(400, f"`{key}` must be true or false, got {value!r}.", code=key)
    return bool(value)


def _prompt(app: Server, messages: list[dict[str, str]]) -> list[int]:
    from distill.teachers.text import chat_prompt_ids

    try:
        with app.tokenizer_lock:
            prompt = chat_prompt_ids(app.tokenizer, messages)
    except Exception as exc:  # the template's own words (e.g. "roles must alternate") are the useful part
        raise HTTPError(400, f"The model's chat template rejected `messages`: {exc}",
                        code="messages") from None
    if not prompt:
        raise HTTPError(400, "`messages` make an empty prompt; send some text.", code="messages")
    return prompt


def _fit(app: Server, prompt_tokens: int, max_tokens: int | None) -> int:
    """`max_tokens`, or as many as fit the context (up to the limit); 400 if the prompt leaves no room."""
    context = app.limits.context
    room = context - prompt_tokens if context else app.limits.max_tokens
    if max_tokens is None:
        max_tokens = min(app.limits.max_tokens, room)
    if room <= 0 or max_tokens > room:
        raise HTTPError(400, f"The prompt is {prompt_tokens} tokens; with max_tokens={max_tokens} it "
                        f"does not fit the model's context of {context} tokens. Shorten `messages` or "
                        "lower max_tokens.", code="context_length_exceeded")
    return max_tokens


# --------------------------------------------------------------------------- responses


def complete(app: Server, req: ChatRequest) -> dict[str, Any]:
    """The non-streaming chat.completion body; the `n` choices are decoded together."""
    from distill.models.generation import logprob_rows

    results = [_result(f) for f in _submit(app, req)]
    choices = []
    for i, g in enumerate(results):
        with app.tokenizer_lock:
            text = app.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            logprobs = {"content": logprob_rows(app.tokenizer, g, req.top_logprobs)} \
                if req.logprobs else None
        choices.append({"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs, "finish_reason": g.finish_reason})
    return {**_head(app, "chat.completion"), "choices": choices,
            "usage": _usage(req, sum(len(g.token_ids) for g in results))}


def _submit(app: Server, req: ChatRequest, events: queue.Queue | None = None) -> list[Any]:
    """One engine request per choice; with `events`, (choice, token) pairs, then (choice, None)."""
    from distill.models.generation import GeneratorClosed

    futures = []
    try:
        for i, params in enumerate(req.params):
            on_token = None if events is None else (lambda token, i=i: events.put((i, token)))
            futures.append(app.engine.submit(req.prompt_ids, params, on_token))
            if events is not None:  # after its last on_token: both run on the worker thread
                futures[-1].add_done_callback(lambda _, i=i: events.put((i, None)))
    except GeneratorClosed:
        raise _shutting_down() from None
    return futures


def _result(future: Any) -> Any:
    from distill.models.generation import GeneratorClosed

    try:
        return future.result()
    except GeneratorClosed:
        raise _shutting_down() from None
    except Exception as exc:
        log.exception("generation failed")
        raise HTTPError(500, f"Generation failed ({type(exc).__name__}: {exc}).", "server_error") from None


def _head(app: Server, kind: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": app.model_name}


def _usage(req: ChatRequest, completion_tokens: int) -> dict[str, int]:
    prompt = len(req.prompt_ids)  # counted once, however many choices share it
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class _Detokenizer:
    """Text pieces of a growing token list whose concatenation is the decoded whole.

    A token alone may be part of a multi-byte character or merge with its neighbours, so the
    whole list is decoded each time and the new suffix sent; an unfinished character waits.
    """

    def __init__(self, app: Server):
        self.app, self.ids, self.sent = app, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode()
        return "" if text.endswith("\ufffd") else self._advance(text)

    def flush(self, ids: list[int]) -> str:
        self.ids = list(ids)
        return self._advance(self._decode())

    def _decode(self) -> str:
        with self.app.tokenizer_lock:
            return self.app.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _advance(self, text: str) -> str:
        piece = text[len(self.sent):]  # if a tokenizer ever rewrote earlier text, the client keeps its own
        self.sent = text
        return piece


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = "distill-serve"
    timeout = 120  # seconds before an idle keep-alive connection is dropped

    def setup(self) -> None:
        super().setup()
        self.server.app.connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app.connection(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)  # request lines: never headers or keys

    def _dispatch(self, method: str) -> None:
        app: Server = self.server.app
        path = urlsplit(self.path).path.rstrip("/") or "/"
        self._streaming = False
        # a body we may refuse to read: then the connection is closed after the error reply
        self._unread = self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        try:
            if path != "/health":
                app.check_key(self.headers.get("Authorization"))
            methods = ROUTES.get(path)
            if methods is None:
                raise HTTPError(404, f"No endpoint at {path}; this server has {', '.join(ROUTES)}.",
                                code="not_found")
            if method not in methods:
                raise HTTPError(405, f"{method} is not allowed on {path}; use {', '.join(methods)}.",
                                code="method_not_allowed", headers={"Allow": ", ".join(methods)})
            getattr(self, methods[method])(app)
        except HTTPError as exc:
            self._error(exc)
        except GONE:
            self.close_connection = True
        except Exception:
            log.exception("request failed")
            self._error(HTTPError(500, "Internal server error; see the server log.", "server_error"))

    def _health(self, app: Server) -> None:
        self._json(200, {"status": "ok"})

    def _models(self, app: Server) -> None:
        model = {"id": app.model_name, "object": "model", "created": 0, "owned_by": "distill"}
        self._json(200, {"object": "list", "data": [model]})

    def _chat(self, app: Server) -> None:
        req = parse_chat(self._body(app), app)
        app.track(+1)
        try:
            if req.stream:
                self._stream(app, req)
            else:
                self._json(200, complete(app, req))
        finally:
            app.track(-1)

    def _body(self, app: Server) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "Send the JSON body with a Content-Length header.", code="length_required")
        if not length.isdigit():
            raise HTTPError(400, f"Content-Length {length!r} is not a byte count.")
        if int(length) > app.limits.max_request_bytes:
            raise HTTPError(413, f"The body is {length} bytes; this server accepts at most "
                            f"{app.limits.max_request_bytes} (restart it with a larger "
                            "--max-request-bytes).", code="request_too_large")
        body = self.rfile.read(int(length))
        self._unread = False
        return body

    def _stream(self, app: Server, req: ChatRequest) -> None:
        """Server-Sent Events: a role chunk per choice, content pieces as tokens come, then [DONE]."""
        events: queue.Queue = queue.Queue()
        futures = _submit(app, req, events)
        head = _head(app, "chat.completion.chunk")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._streaming = True

        def chunk(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice]}

        for i in range(len(futures)):
            self._event(chunk(i, {"role": "assistant", "content": ""}))
        texts, pending, tokens = [_Detokenizer(app) for _ in futures], len(futures), 0
        while pending:
            i, token = events.get()
            if token is not None:
                piece = texts[i].push(token)
                if piece:
                    self._event(chunk(i, {"content": piece}))
                continue
            pending -= 1
            try:
                g = _result(futures[i])
            except HTTPError as exc:  # e.g. shutdown: tell the client, then end the stream
                self._event(exc.body())
                self.close_connection = True
                break
            tokens += len(g.token_ids)
            piece = texts[i].flush(g.token_ids)
            self._event(chunk(i, {"content": piece} if piece else {}, g.finish_reason))
        else:
            if req.include_usage:
                self._event({**head, "choices": [], "usage": _usage(req, tokens)})
            self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, payload: Any) -> None:
        data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")  # one HTTP chunk

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                           **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: HTTPError) -> None:
        if self._streaming:  # the headers are gone: all that is left is to drop the connection
            self.close_connection = True
            return
        if not self._unread:
            self._json(exc.status, exc.body(), exc.headers)
            return
        # An unread body (401, 413) must not be parsed as the next request: close the connection.
        self.close_connection = True
        self._json(exc.status, exc.body(), {**exc.headers, "Connection": "close"})
        self._linger()

    def _linger(self, seconds: float = 2.0) -> None:
        """Read and drop what the client still sends, then close. Closing a socket with unread data
        sends a reset, which can destroy the error reply before the client has read it."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(seconds)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass
