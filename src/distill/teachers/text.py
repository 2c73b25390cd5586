"""The teacher as a text source: one interface, two backends.

    teacher.complete(messages, sampling) -> list[Completion]   # `sampling.n` completions

`LocalTextTeacher` runs a Hugging Face causal LM in this process (batched across concurrent
callers by `distill.models.batching.BatchedGenerator`); `OpenAITeacher` (`distill.teachers.remote`)
calls any OpenAI-compatible chat-completions endpoint. Both are safe to call from several threads:
`distill generate` runs a bounded pool of callers over either.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from distill.core.errors import DistillError


class TeacherUnavailable(DistillError):
    """The teacher could not answer (endpoint down, bad responses) after bounded retries."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, recorded with every generated dataset (OpenAI parameter names)."""

    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # completions per prompt
    seed: int | None = None
    top_logprobs: int = 0  # > 0: also return the top-k log-probabilities of every generated token

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    """One generated response and what it cost."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    # Per generated token, the teacher's top-k alternatives: [{"token": str, "logprob": float,
    # "top_logprobs": [{"token": str, "logprob": float}, ...]}, ...] (OpenAI's `logprobs.content`).
    logprobs: list[dict[str, Any]] | None = None


class TextTeacher(Protocol):
    """Anything that answers chat messages with text."""

    @property
    def identity(self) -> dict[str, Any]:
        """What produced the text (backend, model, endpoint), recorded in datasets; never a secret."""
        ...

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> list[Completion]:
        ...


@dataclass
class LocalTextTeacher:
    """A Hugging Face causal LM (a directory, hub id or `builtin:` name) answering in this process."""

    source: str
    max_batch: int = 8
    device: str = "cpu"
    name: str | None = None  # the model's name in `identity` (default: source)
    _engine: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)

    @property
    def identity(self) -> dict[str, Any]:
        return {"backend": "local", "model": self.name or self.source}

    def _load(self) -> None:
        with self._lock:  # callers arrive from a thread pool; loading a model is not thread-safe
            if self._engine is None:
                self._load_once()

    def _load_once(self) -> None:
        from distill.models.causal_lm import load_causal_lm, load_tokenizer
        from distill.models.batching import BatchedGenerator

        self._tokenizer = load_tokenizer(self.source)
        model = load_causal_lm(self.source).to(self.device).eval()
        self._engine = BatchedGenerator(model, self._tokenizer, max_batch=self.max_batch)

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> list[Completion]:
        from distill.models.generation import GenerationParams, logprob_rows

        self._load()
        prompt = chat_prompt_ids(self._tokenizer, messages)
        start = time.perf_counter()
        futures = [self._engine.submit(prompt, GenerationParams(
            max_new_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            seed=None if sampling.seed is None else sampling.seed + i, top_logprobs=sampling.top_logprobs))
            for i in range(sampling.n)]
        out = []
        for fut in futures:
            g = fut.result()
            out.append(Completion(text=self._tokenizer.decode(g.token_ids, skip_special_tokens=True),
                                  finish_reason=g.finish_reason, prompt_tokens=g.prompt_tokens,
                                  completion_tokens=len(g.token_ids), latency_s=time.perf_counter() - start,
                                  logprobs=logprob_rows(self._tokenizer, g, sampling.top_logprobs)
                                  if sampling.top_logprobs else None))
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` followed by the assistant turn's opening, by the chat template."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = "\n".join(m["content"] for m in messages)  # no template: the plain text of the turns
    return tokenizer(text, add_special_tokens=False)["input_ids"]
