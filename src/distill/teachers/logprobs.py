"""Teacher log-probs returned by an endpoint → the token-level losses of `distill lm`.

An OpenAI-compatible endpoint asked for `top_logprobs=k` returns, for every generated token, the
token and its k most likely alternatives with their log-probabilities. When the student shares the
teacher's tokenizer, each token's text maps back to one token id, and the response becomes a
sparse teacher signal: at the position that predicts response token j, the teacher's top-k ids and
log-probs, and the log of the mass outside them. `StoredTopK` serves it to `fit_lm` exactly like
the on-disk top-k cache, so forward KL, JSD, etc. train on API responses unchanged.

A record whose tokens do not map back to ids that re-decode to its response (another tokenizer,
a token cut inside a UTF-8 character) is skipped and counted, never trained on misaligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from distill.data.tokens import TokenBlocks
from distill.teachers.output import TeacherOutput
from distill.teachers.text import chat_prompt_ids

_NO_TOKEN = -1e4  # log-prob of the padding slots when a token came with fewer than k alternatives


@dataclass
class StoredTopK:
    """A teacher signal held in memory, looked up by dataset index (a `Teacher`)."""

    logprobs: torch.Tensor  # (N, L, k) float32
    indices: torch.Tensor  # (N, L, k) int64
    tail: torch.Tensor  # (N, L, 1) float32: log of the probability outside the top k

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        i = batch["index"].cpu()
        device = batch["input_ids"].device
        return TeacherOutput(topk_logprobs=self.logprobs[i].to(device), topk_indices=self.indices[i].to(device),
                           tail_logprob=self.tail[i].to(device))


def topk_blocks(records: list[dict[str, Any]], tokenizer: Any, seq_len: int,
                k: int) -> tuple[TokenBlocks, StoredTopK, dict[str, int]]:
    """Blocks of prompt + response tokens with a loss on the response, and the teacher's top-k there.

    Returns the blocks, their signal, and counts: `used`, `no_logprobs`, `unaligned`, `too_long`.
    """
    rows, counts = [], {"used": 0, "no_logprobs": 0, "unaligned": 0, "too_long": 0}
    for rec in records:
        if not rec.get("logprobs"):
            counts["no_logprobs"] += 1
            continue
        response = _token_ids(tokenizer, rec["logprobs"], rec["response"])
        if response is None:
            counts["unaligned"] += 1
            continue
        prompt = chat_prompt_ids(tokenizer, rec["messages"])
        if len(prompt) + len(response) > seq_len:
            counts["too_long"] += 1
            continue
        rows.append((prompt, response, rec["logprobs"]))
        counts["used"] += 1
    n = len(rows)
    ids = torch.full((n, seq_len), tokenizer.pad_token_id, dtype=torch.int64)
    attention = torch.zeros((n, seq_len), dtype=torch.bool)
    mask = torch.zeros((n, seq_len))
    logprobs = torch.full((n, seq_len, k), _NO_TOKEN)
    indices = torch.zeros((n, seq_len, k), dtype=torch.int64)
    tail = torch.full((n, seq_len, 1), -1e3)
    for i, (prompt, response, entries) in enumerate(rows):
        full = prompt + response
        ids[i, : len(full)] = torch.tensor(full)
        attention[i, : len(full)] = True
        start = len(prompt) - 1  # position start + j predicts response token j
        mask[i, start: start + len(response)] = 1.0 / len(response)  # every example weighs the same
        for j, entry in enumerate(entries):
            alts = _alternatives(tokenizer, entry)[:k]
            for slot, (token, lp) in enumerate(alts):
                indices[i, start + j, slot], logprobs[i, start + j, slot] = token, lp
            tail[i, start + j, 0] = _log_rest([lp for _, lp in alts])
    return TokenBlocks(ids, attention, mask), StoredTopK(logprobs, indices, tail), counts


def _token_ids(tokenizer: Any, entries: list[dict[str, Any]], response: str) -> list[int] | None:
    ids = [_one_id(tokenizer, e["token"]) for e in entries]
    if any(i is None for i in ids) or tokenizer.decode(ids, skip_special_tokens=True) != response:
        return None
    return ids  # type: ignore[return-value]


def _alternatives(tokenizer: Any, entry: dict[str, Any]) -> list[tuple[int, float]]:
    """(id, log-prob) of the alternatives that map to one token; the chosen token always included."""
    out = {}
    for alt in entry.get("top_logprobs") or []:
        token = _one_id(tokenizer, alt["token"])
        if token is not None and token not in out:
            out[token] = float(alt["logprob"])
    chosen = _one_id(tokenizer, entry["token"])
    if chosen is not None and chosen not in out and entry.get("logprob") is not None:
        out[chosen] = float(entry["logprob"])
    return sorted(out.items(), key=lambda kv: -kv[1])


def _one_id(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 and tokenizer.decode(ids) == text else None


def _log_rest(logprobs: list[float]) -> float:
    rest = 1.0 - sum(math.exp(lp) for lp in logprobs)
    return math.log(rest) if rest > math.exp(-1e3) else -1e3
