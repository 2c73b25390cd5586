"""A language-model teacher outside the training process: its top-k log-probs for every position of
a block, asked from an OpenAI-compatible server and written into the same top-k cache a local
teacher fills, so later runs need no server.

    topk = EndpointTopK("http://127.0.0.1:8000/v1", "teacher", k=64, vocab=49152, concurrency=4)
    cache = TopKCache.build_or_open(topk, blocks, directory, identity=...)   # `compute` is topk.rows

Each block is one `POST /completions` with its token ids as the prompt, `echo: true`,
`max_tokens: 0`, `logprobs: k` and `return_tokens_as_token_ids: true`: the server scores the
prompt and returns, for each token, the top-k alternatives given the tokens before it
(`distill serve` and vLLM answer this; position t's signal, which predicts token t+1, is the entry
of token t+1). The mass outside the top k is 1 − their sum, as the local cache computes it. Blocks
are asked `concurrency` at a time with the client's retries; the cache's shards make a build that
dies midway resume where it stopped.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from distill.core.errors import ConfigError
from distill.teachers.text import TeacherUnavailable

TAIL_FLOOR = -1e3  # as `topk_of`: the log of a mass that rounds to nothing


class EndpointTopK:
    """Top-k log-probs of the model behind `{base_url}/completions`, block by block."""

    def __init__(self, base_url: str, model: str, *, k: int, vocab: int, concurrency: int = 4,
                 api_key_env: str | None = None, timeout_s: float = 120.0, max_retries: int = 4):
        from distill.teachers.remote import OpenAITeacher

        if k < 1 or concurrency < 1:
            raise ConfigError(f"teacher endpoint: k ({k}) and concurrency ({concurrency}) must be >= 1.")
        self.k, self.vocab, self.concurrency = k, vocab, concurrency
        self.client = OpenAITeacher(base_url=base_url, model=model, api_key_env=api_key_env,
                                    timeout_s=timeout_s, max_retries=max_retries)

    @property
    def identity(self) -> dict[str, Any]:
        return {"backend": "endpoint", "base_url": self.client.base_url, "model": self.client.model}

    def rows(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logprobs (B, T, k), ids (B, T, k), log tail (B, T, 1)) of blocks `input_ids` (B, T) whose
        first `lengths` tokens are real; other positions hold a finite filler the loss masks."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            parts = list(pool.map(lambda i: self.block(input_ids[i, :int(lengths[i])].tolist(), input_ids.shape[1]),
                                  range(len(input_ids))))
        return tuple(torch.stack(p) for p in zip(*parts))

    def sampled_rows(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logprob (B, T, 1), id (B, T, 1), log tail (B, T, 1)): at position t, the log-prob of token
        t + 1 only, for servers that return no alternatives (`TeacherOutput.sampled`); fillers elsewhere."""
        width = input_ids.shape[1]
        logprobs = torch.zeros(len(input_ids), width, 1)
        for r, values in enumerate(self.token_logprobs(input_ids, lengths)):
            logprobs[r, : len(values), 0] = torch.tensor(values)
        indices = torch.roll(input_ids, -1, dims=1)[..., None].clone()
        tail = torch.log1p(-logprobs.exp().clamp(max=1 - 1e-6)).clamp_min(TAIL_FLOOR)
        return logprobs, indices, tail

    def token_logprobs(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> list[list[float]]:
        """Per block, the log-prob the served model gives each real token after the first, given the
        tokens before it (its held-out perplexity, without the model in this process)."""
        def one(i: int) -> list[float]:
            ids = input_ids[i, :int(lengths[i])].tolist()
            if len(ids) < 2:
                return []
            answer = self.client.request({"model": self.client.model, "prompt": ids, "max_tokens": 0, "echo": True,
                                          "logprobs": 1, "temperature": 0, "return_tokens_as_token_ids": True},
                                         path="/completions")
            return _token_logprobs(answer, len(ids), self.client.base_url)

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, range(len(input_ids))))

    def block(self, ids: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block's (T, k) log-probs and ids and (T, 1) log tail, from one scoring request."""
        k = self.k
        logprobs = torch.full((seq_len, k), math.log(0.5 / k))
        indices = torch.arange(k).expand(seq_len, k).clone()
        tail = torch.full((seq_len, 1), math.log(0.5))
        if len(ids) < 2:
            return logprobs, indices, tail
        answer = self.client.request({"model": self.client.model, "prompt": ids, "max_tokens": 0, "echo": True,
                                      "logprobs": k, "temperature": 0, "return_tokens_as_token_ids": True},
                                     path="/completions")
        tops = _top_logprobs(answer, len(ids), self.client.base_url)
        for t in range(len(ids) - 1):  # position t predicts token t+1: the entry of token t+1
            entry = sorted(((_token_id(name, self.client.base_url), lp) for name, lp in tops[t + 1].items()),
                           key=lambda pair: -pair[1])
            if len(entry) < k:
                raise TeacherUnavailable(f"Teacher endpoint {self.client.base_url} returned {len(entry)} "
                                         f"alternatives for token {t + 1} of a block, fewer than teacher.top_k={k}; "
                                         "lower teacher.top_k, or raise the server's log-prob limit (distill serve "
                                         "allows 100; vLLM's --max-logprobs).")
            ids_t, lps_t = zip(*entry[:k])
            if max(ids_t) >= self.vocab:
                raise TeacherUnavailable(f"Teacher endpoint {self.client.base_url} named token id {max(ids_t)}, "
                                         f"outside the vocabulary of {self.vocab}: it serves another tokenizer.")
            indices[t] = torch.tensor(ids_t)
            logprobs[t] = torch.tensor(lps_t)
            mass = math.fsum(math.exp(lp) for lp in lps_t)  # exact sum: the tail may be 1e-6 of it
            tail[t, 0] = max(math.log1p(-mass) if mass < 1 else TAIL_FLOOR, TAIL_FLOOR)
        return logprobs, indices, tail


def _token_logprobs(answer: dict[str, Any], n: int, where: str) -> list[float]:
    try:
        values = answer["choices"][0]["logprobs"]["token_logprobs"][1:n]
    except (KeyError, IndexError, TypeError):
        values = None
    if not isinstance(values, list) or len(values) != n - 1 or not all(isinstance(v, (int, float)) for v in values):
        raise TeacherUnavailable(f"Teacher endpoint {where} returned no log-prob for every prompt token (the answer "
                                 f"was {str(answer)[:200]!r}); it must support echo with logprobs on /completions.")
    return [float(v) for v in values]


def _top_logprobs(answer: dict[str, Any], n: int, where: str) -> list[Any]:
    """The echoed prompt's top-k maps (one per token), or a clear error with what the server said."""
    try:
        tops = answer["choices"][0]["logprobs"]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise TeacherUnavailable(f"Teacher endpoint {where} returned no prompt log-probs (the answer was "
                                 f"{str(answer)[:200]!r}); it must support echo with logprobs on /completions, "
                                 "as distill serve and vLLM do.") from None
    if not isinstance(tops, list) or len(tops) < n or not all(isinstance(t, dict) for t in tops[1:n]):
        raise TeacherUnavailable(f"Teacher endpoint {where} returned top log-probs for {len(tops or [])} of the "
                                 f"{n} prompt tokens; it must echo every prompt token's alternatives.")
    return tops


def _token_id(name: str, where: str) -> int:
    if not name.startswith("token_id:"):
        raise TeacherUnavailable(f"Teacher endpoint {where} named a token {name!r}, not `token_id:N`; it must "
                                 "support return_tokens_as_token_ids (distill serve and vLLM do).")
    return int(name.removeprefix("token_id:"))
