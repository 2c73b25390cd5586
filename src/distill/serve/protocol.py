"""The OpenAI protocol as `distill serve` speaks it: chat and text completion bodies validated field
by field into one `GenRequest` (a clear 400 naming what to fix, a 404 for a model this server does
not serve, a 400 for every field it would otherwise have to ignore), and the server's limits.

`app` below is a `distill.serve.server.Server` (its tokenizer, limits and model name).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat
MAX_TEXT_LOGPROBS = 100  # text completions: OpenAI allows 5; a teacher's top-k cache asks for 64
MAX_STOP = 4  # OpenAI's limit on stop sequences

# Fields a client may send that change nothing here when left at their neutral value.
_NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
            "best_of": (1,), "suffix": ("",), "parallel_tool_calls": (),
            "tool_choice": ("none",)}
_IGNORED = {"user", "store", "metadata", "service_tier"}  # bookkeeping fields, no effect on the answer
_UNSUPPORTED = {"tools", "functions", "function_call", "response_format", "audio", "modalities",
                "prediction", "reasoning_effort", "web_search_options", "logit_bias", "presence_penalty",
                "frequency_penalty", "best_of", "suffix", "parallel_tool_calls", "tool_choice"}
_CHAT_FIELDS = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
                "seed", "stream", "stream_options", "logprobs", "top_logprobs", "stop"}
_TEXT_FIELDS = {"prompt", "model", "max_tokens", "temperature", "top_p", "n", "seed", "stream",
                "stream_options", "logprobs", "stop", "echo", "return_tokens_as_token_ids"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class HTTPError(Exception):
    """A refused request, sent to the client as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers, self.param = headers or {}, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


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
class GenRequest:
    """A validated chat or text completion request, ready for the engine.

    Choice `c` decodes `prompts[c // n]` with `params[c]` (OpenAI orders choices prompt by prompt).
    """

    kind: str  # "chat" | "text"
    prompts: list[list[int]]
    params: list[Any]  # one GenerationParams per choice
    n: int
    stream: bool
    logprobs: bool
    top_logprobs: int
    include_usage: bool
    stop: tuple[str, ...]
    echo: bool = False  # text completions: the prompt comes back first (with its log-probs when asked)
    token_ids: bool = False  # logprobs name tokens "token_id:N" (vLLM's return_tokens_as_token_ids)

    def prompt_of(self, choice: int) -> list[int]:
        return self.prompts[choice // self.n]


def parse_chat(body: bytes, app: Any) -> GenRequest:
    """Validate a chat-completion body and tokenize its messages."""
    data = _object(body, '{"messages": [{"role": "user", "content": "Hello"}]}')
    _fields(data, _CHAT_FIELDS, app)
    messages = _messages(data.get("messages"))
    logprobs = _flag(data, "logprobs")
    top_logprobs = _number(data, "top_logprobs", int, 0, MAX_TOP_LOGPROBS, default=0)
    if top_logprobs and not logprobs:
        raise HTTPError(400, "`top_logprobs` needs `logprobs: true`.", code="top_logprobs",
                        param="top_logprobs")
    max_tokens = _number(data, "max_completion_tokens", int, 1) or _number(data, "max_tokens", int, 1)
    prompt = _chat_prompt(app, messages)
    return _request("chat", data, app, [prompt], max_tokens, logprobs, top_logprobs)


def parse_completion(body: bytes, app: Any) -> GenRequest:
    """Validate a text-completion body (`prompt`: a string, strings, token ids or lists of them)."""
    data = _object(body, '{"prompt": "Once upon a time", "max_tokens": 16}')
    _fields(data, _TEXT_FIELDS, app)
    prompts = _text_prompts(app, data.get("prompt"))
    top = _number(data, "logprobs", int, 0, MAX_TEXT_LOGPROBS)  # an integer here: alternatives per token
    echo, token_ids = _flag(data, "echo"), _flag(data, "return_tokens_as_token_ids")
    if echo and _flag(data, "stream"):
        raise HTTPError(400, "`echo` is not available with `stream: true`; ask without streaming.",
                        code="echo", param="echo")
    # max_tokens 0 scores the prompt only (echo with logprobs, as lm-evaluation-harness asks)
    max_tokens = _number(data, "max_tokens", int, 0 if echo else 1, default=16)  # OpenAI's default: 16
    req = _request("text", data, app, prompts, max_tokens, top is not None, top or 0)
    return dataclasses.replace(req, echo=echo, token_ids=token_ids)


def _request(kind: str, data: dict, app: Any, prompts: list[list[int]], max_tokens: int | None,
             logprobs: bool, top_logprobs: int) -> GenRequest:
    """The fields both endpoints share, checked, and one GenerationParams per choice."""
    from distill.models.generation import GenerationParams

    if max_tokens is not None and max_tokens > app.limits.max_tokens:
        raise HTTPError(400, f"max_tokens={max_tokens} is above this server's limit of "
                        f"{app.limits.max_tokens}; ask for fewer, or restart the server with a larger "
                        "--max-tokens.", code="max_tokens", param="max_tokens")
    temperature = _number(data, "temperature", float, 0, 2, default=1.0)
    top_p = _number(data, "top_p", float, 0, 1, default=1.0)
    if top_p == 0:
        raise HTTPError(400, "`top_p` must be above 0; for greedy decoding set temperature to 0.",
                        code="top_p", param="top_p")
    n = _number(data, "n", int, 1, app.limits.max_n, default=1)
    if n * len(prompts) > app.limits.max_n:
        raise HTTPError(400, f"{len(prompts)} prompts × n={n} make {n * len(prompts)} completions; this "
                        f"server decodes at most {app.limits.max_n} per request (--max-batch).",
                        code="n", param="n")
    seed = _number(data, "seed", int, -(2**63), 2**63 - n)  # torch's seed range, for seed + i per choice
    stream = _flag(data, "stream")
    if logprobs and stream:
        raise HTTPError(400, "`logprobs` are not available with `stream: true`; ask without streaming.",
                        code="logprobs", param="logprobs")
    stop = _stop(data.get("stop"))
    params = []
    for prompt in prompts:
        fitted = _fit(app, len(prompt), max_tokens)
        params += [GenerationParams(max_new_tokens=fitted, temperature=temperature, top_p=top_p,
                                    seed=None if seed is None else seed + i,
                                    top_logprobs=max(top_logprobs, 1) if logprobs else 0) for i in range(n)]
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise HTTPError(400, '`stream_options` must be an object such as {"include_usage": true}.',
                        code="stream_options", param="stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    return GenRequest(kind, prompts, params, n, stream, logprobs, top_logprobs, include_usage, stop)


def _object(body: bytes, example: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise HTTPError(400, f"The request body is not valid JSON ({exc}); send an object such as "
                        f"{example}.") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    return data


def _fields(data: dict[str, Any], known: set[str], app: Any) -> None:
    """Refuse fields this server would have to ignore, and a model it does not serve."""
    for key, value in data.items():
        if key in known or key in _IGNORED or (key in _NEUTRAL and (value is None or value in _NEUTRAL[key])):
            continue
        if key in _UNSUPPORTED:
            raise HTTPError(400, f"`{key}` is not supported by distill serve (it serves a plain "
                            f"language model); leave out `{key}`.", code="unsupported_parameter", param=key)
        raise HTTPError(400, f"Unrecognized request argument supplied: {key}. This endpoint takes "
                        f"{', '.join(sorted(known))}.", code="unknown_parameter", param=key)
    model = data.get("model")
    if model is not None and model != app.model_name:
        raise HTTPError(404, f"The model `{model}` does not exist on this server; it serves "
                        f"`{app.model_name}` (GET /v1/models).", code="model_not_found", param="model")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise HTTPError(400, '`messages` must be a non-empty list of {"role": ..., "content": ...} '
                        "objects.", code="messages", param="messages")
    out = []
    for i, m in enumerate(value):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: text ones only
            texts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None
                     for p in content]
            content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise HTTPError(400, f"messages[{i}] needs a string `role` and a string `content` (text "
                            "parts only).", code="messages", param=f"messages[{i}]")
        if role not in _ROLES:
            raise HTTPError(400, f"messages[{i}].role is {role!r}; this server takes "
                            f"{', '.join(_ROLES)} (no tools).", code="messages", param=f"messages[{i}].role")
        out.append({"role": _ROLES[role], "content": content})
    return out


def _text_prompts(app: Any, value: Any) -> list[list[int]]:
    """`prompt` as token-id lists: a string, a list of strings, a list of ids, or a list of id lists."""
    vocab = len(app.tokenizer)
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_id(t) for t in value):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > app.limits.max_n:
        raise HTTPError(400, "`prompt` must be a string, a list of up to "
                        f"{app.limits.max_n} strings, or token ids.", code="prompt", param="prompt")
    prompts = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            ids = app.tokenizer(p, add_special_tokens=False)["input_ids"]
        elif isinstance(p, list) and all(_is_id(t) for t in p):
            ids = p
            if any(t >= vocab for t in ids):
                raise HTTPError(400, f"prompt[{i}] has a token id >= the vocabulary size {vocab}.",
                                code="prompt", param=f"prompt[{i}]")
        else:
            raise HTTPError(400, f"prompt[{i}] must be a string or a list of token ids.", code="prompt",
                            param=f"prompt[{i}]")
        if not ids:
            raise HTTPError(400, f"prompt[{i}] is empty; send some text.", code="prompt",
                            param=f"prompt[{i}]")
        prompts.append(list(ids))
    return prompts


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) for s in stops):
        raise HTTPError(400, f"`stop` must be a string or a list of up to {MAX_STOP} strings.",
                        code="stop", param="stop")
    if any(s == "" for s in stops):
        raise HTTPError(400, "`stop` sequences must not be empty strings.", code="stop", param="stop")
    return tuple(stops)


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
        raise HTTPError(400, f"`{key}` must be {what}{bounds}, got {value!r}.", code=key, param=key)
    return kind(value)


def _flag(data: dict, key: str) -> bool:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise HTTPError(400, f"`{key}` must be true or false, got {value!r}.", code=key, param=key)
    return bool(value)


def _chat_prompt(app: Any, messages: list[dict[str, str]]) -> list[int]:
    from distill.teachers.text import chat_prompt_ids

    try:
        prompt = chat_prompt_ids(app.tokenizer, messages)
    except Exception as exc:  # the template's own words (e.g. "roles must alternate") are the useful part
        raise HTTPError(400, f"The model's chat template rejected `messages`: {exc}",
                        code="messages", param="messages") from None
    if not prompt:
        raise HTTPError(400, "`messages` make an empty prompt; send some text.", code="messages",
                        param="messages")
    return prompt


def _fit(app: Any, prompt_tokens: int, max_tokens: int | None) -> int:
    """`max_tokens`, or as many as fit the context (up to the limit); 400 if the prompt leaves no room."""
    context = app.limits.context
    room = context - prompt_tokens if context else app.limits.max_tokens
    asked = max_tokens
    if max_tokens is None:
        max_tokens = min(app.limits.max_tokens, room)
    if (room <= 0 and asked != 0) or max_tokens > room:  # 0 (echo): a prompt filling the context is scored
        raise HTTPError(400, f"The prompt is {prompt_tokens} tokens; with max_tokens={max_tokens} it "
                        f"does not fit the model's context of {context} tokens. Shorten the prompt or "
                        "lower max_tokens.", code="context_length_exceeded")
    return max_tokens
