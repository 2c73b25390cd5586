"""Any OpenAI-compatible chat-completions endpoint as a `TextTeacher`, on the standard library.

    teacher = OpenAITeacher("http://127.0.0.1:8000/v1", "my-model", requests_per_s=5)
    teacher.complete([{"role": "user", "content": "Hi"}], Sampling(n=2, top_logprobs=5))

OpenAI, vLLM, llama.cpp and `distill serve` all speak this protocol. Transient failures (connection
refused, timeouts, 429, 5xx, bodies that are not a chat completion) are retried with jittered
exponential backoff, honouring `Retry-After`; other refusals fail at once, since retrying a bad
request only wastes the budget. The API key is read from the environment variable `api_key_env` or
the file `api_key_file` (e.g. a Docker/Kubernetes secret) on every call and is never stored,
recorded in `identity`, logged or put in an error message.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.credentials import one_source, open_key_file, read_key_file
from distill.core.errors import ConfigError
from distill.teachers.text import Completion, Sampling, TeacherUnavailable

_RETRY_AFTER_CAP_S = 60.0  # a server asking for longer is better reported than waited on
_MAX_SERVER_TEXT = 300  # server error text kept in our messages: enough to read, not a page of HTML


class RateLimiter:
    """Spaces call starts at least `1 / per_s` seconds apart across every thread sharing it.

    Each caller reserves the next free start slot under a lock and sleeps outside it, so waiting
    threads do not hold the lock and starts stay evenly spaced however many threads there are.
    """

    def __init__(self, per_s: float) -> None:
        self._interval = 1.0 / per_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; `retry_after_s` is the server's hint, if any."""

    def __init__(self, problem: str, retry_after_s: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after_s = retry_after_s


class _Default(str):
    """The default `api_key_env`, told apart from the same name given explicitly."""


DEFAULT_KEY_ENV = _Default("OPENAI_API_KEY")


@dataclass
class OpenAITeacher:
    """A chat model behind `{base_url}/chat/completions`, safe to call from many threads at once.

    `base_url` includes the API prefix (`.../v1`), as in the `openai` client. `api_key_env` names
    the environment variable holding the key (None: send no key); a missing variable is not an
    error because local servers need none. `api_key_file` is a file holding only the key, read
    instead of the default variable; it must exist and not be empty. `max_retries` counts retries
    after the first attempt.
    """

    base_url: str
    model: str
    api_key_env: str | None = DEFAULT_KEY_ENV
    api_key_file: Path | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    requests_per_s: float | None = None
    _limiter: RateLimiter | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAITeacher base_url {self.base_url!r} is not an http(s) URL; "
                              "use e.g. http://127.0.0.1:8000/v1.")
        for name in ("timeout_s", "requests_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"OpenAITeacher {name}={value} must be > 0.")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ConfigError(f"OpenAITeacher max_retries={self.max_retries} and "
                              f"backoff_s={self.backoff_s} must be >= 0.")
        if self.requests_per_s is not None:
            self._limiter = RateLimiter(self.requests_per_s)
        if self.api_key_file is not None and isinstance(self.api_key_env, _Default):
            self.api_key_env = None  # a key file replaces the default variable, not one named explicitly
        one_source(self.api_key_env, self.api_key_file, "api_key_env", "api_key_file")
        if self.api_key_file is not None:
            open_key_file(self.api_key_file, "api_key_file")  # fail now, and warn if others can read it

    @property
    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model}

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> list[Completion]:
        """`sampling.n` completions of `messages`, retrying transient failures.

        Raises:
            TeacherUnavailable: the endpoint refused the request (bad credentials, a 4xx), or every
                attempt failed; the message names the URL and the last problem, never the key.
        """
        start = time.perf_counter()
        data = self.request(_request_body(self.model, messages, sampling))
        return _parse_completions(data, latency_s=time.perf_counter() - start)

    def request(self, payload: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
        """POST `payload` to `{base_url}{path}`, retrying transient failures; the decoded JSON answer."""
        body = json.dumps(payload).encode()
        url = self.base_url.rstrip("/") + path
        key = self._key()
        attempts = self.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            if self._limiter is not None:
                self._limiter.wait()
            try:
                return self._post(body, key, url)
            except _Retryable as err:
                problem = _redact(err.problem, key)
                if attempt + 1 < attempts:
                    time.sleep(self._delay(attempt, err.retry_after_s))
        raise TeacherUnavailable(
            f"Teacher endpoint {url} failed {attempts} attempt(s); last problem: {problem}. "
            "Is the server running and reachable at base_url? `distill serve MODEL_DIR` starts a "
            "local one; raise timeout_s or max_retries if it is only slow or busy.")

    def _key(self) -> str | None:
        """Read on every call, so a rotated secret is picked up and the key is never kept."""
        if self.api_key_file is not None:
            return read_key_file(self.api_key_file, "api_key_file")
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry `attempt + 1`: the server's hint, else jittered backoff."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), _RETRY_AFTER_CAP_S)
        # Jitter keeps a pool of threads that failed together from retrying in lockstep.
        return self.backoff_s * 2**attempt * random.uniform(0.5, 1.5)

    def _post(self, body: bytes, key: str | None, url: str | None = None) -> dict[str, Any]:
        """One request: the decoded answer, or `_Retryable` / `TeacherUnavailable`."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url or self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err, key, url) from None
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise _Retryable(self._transport_problem(err)) from None
        return _decode(raw, key)

    def _http_error(self, err: urllib.error.HTTPError, key: str | None, url: str | None = None) -> Exception:
        """The exception for an HTTP error status: retryable for 408/429/5xx, final otherwise."""
        status, url = err.code, url or self.url
        text = _trim(_redact(_server_message(err), key))
        if status in (408, 429) or status >= 500:
            return _Retryable(f"HTTP {status}: {text}", _retry_after(err.headers))
        if status in (401, 403):
            return TeacherUnavailable(f"Teacher endpoint {url} refused the credentials "
                                      f"(HTTP {status}: {text}); {self._key_fix(key)}.")
        hint = ""
        if status == 404:
            hint = (" Set the teacher's `model` to a name the server serves (GET /v1/models)."
                    if "model" in text.lower() else " Check base_url (it includes the API prefix, e.g. /v1).")
        return TeacherUnavailable(f"Teacher endpoint {url} rejected the request for model "
                                  f"{self.model!r} (HTTP {status}): {text.rstrip('.')}.{hint}")

    def _key_fix(self, key: str | None) -> str:
        """What to change when the endpoint refuses the key: where it comes from, never what it is."""
        if self.api_key_file is not None:
            return f"put a key it accepts in {self.api_key_file}"
        if self.api_key_env:
            unset = "" if key else " (it is not set now)"
            return f"set the environment variable {self.api_key_env} to a key it accepts{unset}"
        return "set api_key_env (an environment variable) or api_key_file (a file) to where the key is"

    def _transport_problem(self, err: BaseException) -> str:
        reason = getattr(err, "reason", err)  # URLError wraps the socket error in .reason
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"no answer within timeout_s={self.timeout_s} s"
        return f"cannot connect or read the response ({type(reason).__name__}: {reason})"


def _request_body(model: str, messages: list[dict[str, str]], sampling: Sampling) -> dict[str, Any]:
    """The chat-completions JSON for `sampling`; logprobs fields only when top-k is asked for."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": sampling.max_tokens,
                            "temperature": sampling.temperature, "top_p": sampling.top_p,
                            "n": sampling.n}
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = sampling.top_logprobs
    return body


def _parse_completions(data: dict[str, Any], latency_s: float) -> list[Completion]:
    """Completions from a chat-completion response, in choice order.

    `usage` counts completion tokens over all choices: with n > 1 each choice counts its own tokens
    when every choice carries their log-probs, else an even share (the remainder to the first ones,
    so the shares sum to the total); no usage counts as 0.
    """
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        total = usage.get("completion_tokens")
        if total is None and usage.get("total_tokens") is not None:
            total = int(usage["total_tokens"]) - prompt
        contents = [(c.get("logprobs") or {}).get("content") if isinstance(c.get("logprobs"), dict) else None
                    for c in choices]
        counted = [len(c) for c in contents if isinstance(c, list)]
        shares = counted if len(counted) == len(choices) and sum(counted) == int(total or 0) else \
            _split_evenly(int(total or 0), len(choices))
        out = []
        for choice, share in zip(choices, shares):
            logprobs = choice.get("logprobs")
            out.append(Completion(
                text=(choice.get("message") or {}).get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop", prompt_tokens=prompt,
                completion_tokens=share, latency_s=latency_s,
                logprobs=logprobs.get("content") if isinstance(logprobs, dict) else None))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise _Retryable(f"malformed chat completion ({type(err).__name__}: {err})") from None
    return out


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(max(total, 0), parts)
    return [base + (i < extra) for i in range(parts)]


def _decode(raw: bytes, key: str | None) -> dict[str, Any]:
    """The JSON body if it looks like a chat completion; anything else is a retryable problem."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        text = _trim(_redact(raw.decode("utf-8", "replace"), key))
        raise _Retryable(f"response is not JSON: {text!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        error = data.get("error") if isinstance(data, dict) else None
        detail = f": {_trim(_redact(str(error), key))}" if error else ""
        raise _Retryable(f"response has no `choices`{detail}")
    return data


def _server_message(err: urllib.error.HTTPError) -> str:
    """The server's error text: OpenAI's `error.message` when the body has it, else the raw body."""
    try:
        raw = err.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return err.reason or ""
    try:
        error = json.loads(raw).get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = None
    return str(text) if text else raw.strip() or str(err.reason or "")


def _retry_after(headers: Any) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form is ignored (backoff applies instead)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _trim(text: str) -> str:
    return text if len(text) <= _MAX_SERVER_TEXT else text[:_MAX_SERVER_TEXT] + "…"


def _redact(text: str, key: str | None) -> str:
    """`text` without the key, in case a server echoes the credentials back in its error."""
    return text.replace(key, "***") if key else text


def served_model(base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 10.0) -> str:
    """The first model an OpenAI-compatible server lists at `{base_url}/models`."""
    key = os.environ.get(api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base_url.rstrip('/')}/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            models = json.loads(response.read()).get("data") or []
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise TeacherUnavailable(f"Cannot list the models at {url} ({_redact(str(exc), key)}); check the URL "
                                 "(it includes /v1), or name the model with --model.") from None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise TeacherUnavailable(f"{url} lists no model; name one with --model.")
    return str(models[0]["id"])
