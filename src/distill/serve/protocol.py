"""The OpenAI chat-completions protocol as `distill serve` speaks it: request bodies validated field by
field (a clear 400 naming what to fix), the server's limits, prompts fitted to the context, and the
response pieces (ids, usage, incremental detokenization for streams). `app` below is a
`distill.serve.server.Server`."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class HTTPError(Exception):
    """A refused request, sent to the client as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def shutting_down() -> HTTPError:
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


def parse_chat(body: bytes, app: Any) -> ChatRequest:
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


def _prompt(app: Any, messages: list[dict[str, str]]) -> list[int]:
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


def _fit(app: Any, prompt_tokens: int, max_tokens: int | None) -> int:
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


def response_head(app: Any, kind: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": app.model_name}


def usage(req: ChatRequest, completion_tokens: int) -> dict[str, int]:
    prompt = len(req.prompt_ids)  # counted once, however many choices share it
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class Detokenizer:
    """Text pieces of a growing token list whose concatenation is the decoded whole.

    A token alone may be part of a multi-byte character or merge with its neighbours, so the
    whole list is decoded each time and the new suffix sent; an unfinished character waits.
    """

    def __init__(self, app: Any):
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
