"""`distill serve`: an OpenAI-compatible server for a Hugging Face causal LM, on uvicorn.

    distill serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--api-key-env NAME | --api-key-file PATH]
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

The routes are `distill.serve.app` (Starlette), the request rules `distill.serve.protocol`, the
decoding `distill.models.batching` (continuous batching). The server listens on 127.0.0.1 unless
told otherwise, and refuses any other address without a key.

Starlette and uvicorn rather than FastAPI: the protocol layer already validates each body into
OpenAI's error shape (a 400 naming the field, a 404 `model_not_found`), which FastAPI's pydantic
validation would answer with its own 422 bodies; Starlette is the maintained ASGI core FastAPI is
built on, and uvicorn its standard server. For production, `vllm serve` on an exported student or
`ollama create` on its GGUF export are the routes (README).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from distill.core.credentials import env_key, one_source, open_key_file
from distill.core.errors import DistillError
from distill.serve.protocol import Limits

log = logging.getLogger(__name__)


class Server:
    """A model's batching engine and the uvicorn server in front of it, on an already bound socket."""

    def __init__(self, sock: socket.socket, engine: Any, tokenizer: Any, *, model_name: str,
                 api_key: str | None, limits: Limits, log_level: str = "warning"):
        import uvicorn

        from distill.serve.app import build_app

        self.sock, self.engine, self.tokenizer = sock, engine, tokenizer
        self.model_name, self.limits, self.api_key = model_name, limits, api_key
        self.stopping = False
        self.address: tuple[str, int] = tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        config = uvicorn.Config(build_app(self), lifespan="off", log_level=log_level,
                                timeout_graceful_shutdown=10, timeout_keep_alive=30)
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Answer requests until `shutdown()` is called from another thread."""
        self._uvicorn.run(sockets=[self.sock])

    def start_background(self, timeout: float = 30.0) -> threading.Thread:
        """Serve from a thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, name="distill-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DistillError(f"The server did not start on {self.url}; see the log above.")
            time.sleep(0.01)
        return self._thread

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort running generations (their clients get 503), free the port.

        Idempotent. Aborting rather than finishing bounds the wait: a long generation on a CPU
        can take minutes.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.stopping = True
        self.engine.close()
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()


def make_server(model_dir_or_source: str, *, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None, max_request_bytes: int = 1_000_000,
                max_tokens_limit: int = 512, max_batch: int = 8, model_name: str | None = None,
                log_level: str = "warning") -> Server:
    """Bind `host:port` (0 = any free port), then load the model (a directory, hub id or `builtin:`).

    An address other machines can reach needs `api_key`: the server would otherwise answer anyone.
    """
    if not _is_loopback(host) and not api_key:
        raise DistillError(f"Refusing to serve on {host}, which other machines can reach, without an API key: "
                           "require one with --api-key-env NAME or --api-key-file PATH, or keep the default "
                           "--host 127.0.0.1.")
    try:  # the web stack is checked before anything is bound or loaded
        import uvicorn  # noqa: F401

        import distill.serve.app  # noqa: F401  (Starlette)
    except ImportError as exc:
        raise DistillError(f"distill serve needs {exc.name}: pip install 'distill[lm]' (Starlette and uvicorn).") from None
    from distill.models.batching import BatchedGenerator
    from distill.models.causal_lm import load_causal_lm, load_tokenizer

    sock = _bind(host, port)  # first: a busy port should not cost a model load
    try:
        tokenizer = load_tokenizer(model_dir_or_source, key="MODEL_DIR")
        model = load_causal_lm(model_dir_or_source, key="MODEL_DIR").eval()
    except BaseException:
        sock.close()
        raise
    source = Path(model_dir_or_source)
    name = model_name or (source.name if source.is_dir() else model_dir_or_source)
    limits = Limits(max_request_bytes, max_tokens_limit, max_batch,
                    getattr(model.config, "max_position_embeddings", None))
    engine = BatchedGenerator(model, tokenizer, max_batch=max_batch)
    try:
        return Server(sock, engine, tokenizer, model_name=name, api_key=api_key, limits=limits,
                      log_level=log_level)
    except BaseException:
        engine.close()
        sock.close()
        raise


def run(model_dir: str, *, host: str, port: int, api_key_env: str | None = None,
        api_key_file: Path | None = None, **limits: Any) -> int:
    """`distill serve`: serve until Ctrl-C or SIGTERM, then shut down cleanly."""
    api_key = _server_key(api_key_env, api_key_file)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = make_server(model_dir, host=host, port=port, api_key=api_key, log_level="info", **limits)
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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DistillError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another "
                           "--port or --host, or stop the process using it.") from None
    return sock
