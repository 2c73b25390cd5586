"""An OpenAI-compatible chat-completions server for a Hugging Face causal LM, on the standard library.

    distill serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--api-key-env NAME | --api-key-file PATH]
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: `POST /v1/chat/completions` (JSON, or Server-Sent Events with `stream: true`),
`GET /v1/models`, and `GET /health`, the one endpoint open without the API key. The server listens
on 127.0.0.1 unless told otherwise, and refuses any other address without a key. Concurrent
requests are decoded together by `distill.models.batching.BatchedGenerator`. Errors have OpenAI's
shape, `{"error": {"message", "type", "code"}}`, so OpenAI clients show our message.

The protocol itself (request validation, limits, response pieces) is `distill.serve.protocol`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import queue
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from distill.core.credentials import env_key, one_source, open_key_file
from distill.core.errors import DistillError
from distill.serve.protocol import (
    ChatRequest,
    Detokenizer,
    HTTPError,
    Limits,
    parse_chat,
    response_head,
    shutting_down,
    usage,
)

log = logging.getLogger(__name__)
ROUTES = {"/v1/chat/completions": {"POST": "_chat"}, "/v1/models": {"GET": "_models"},
          "/health": {"GET": "_health"}}
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)  # client left


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
                raise shutting_down()
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
    from distill.models.batching import BatchedGenerator

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
    return {**response_head(app, "chat.completion"), "choices": choices,
            "usage": usage(req, sum(len(g.token_ids) for g in results))}


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
        raise shutting_down() from None
    return futures


def _result(future: Any) -> Any:
    from distill.models.generation import GeneratorClosed

    try:
        return future.result()
    except GeneratorClosed:
        raise shutting_down() from None
    except Exception as exc:
        log.exception("generation failed")
        raise HTTPError(500, f"Generation failed ({type(exc).__name__}: {exc}).", "server_error") from None


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
        head = response_head(app, "chat.completion.chunk")
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
        texts, pending, tokens = [Detokenizer(app) for _ in futures], len(futures), 0
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
                self._event({**head, "choices": [], "usage": usage(req, tokens)})
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
