"""Language-model teachers: the live model on every batch, or its top-k log-probs cached once.

Both answer `signal(batch) -> TeacherOutput` (`distill.teachers.output`), so training cannot tell
them apart. The cache (`distill.teachers.cache`, the one every teacher signal uses) stores, for
every position of every training block, the teacher's top-k log-probs (float16), their token ids
(int16 when the vocabulary allows, else int32) and the log of the remaining tail mass (float16):
4k + 2 bytes per token. Its identity is the teacher (id), tokenizer (fingerprint), k, vocabulary,
corpus (fingerprint) and block length: a cache made for anything else is refused, never read.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.data.tokens import TokenBlocks
from distill.teachers.cache import ShardedCache
from distill.teachers.output import TeacherOutput

SHARD_ROWS = 256  # blocks per shard (256 × 128 tokens × 258 B ≈ 8 MB at k = 64)

class LiveLMTeacher:
    """The frozen teacher runs on every batch (needed for on-policy samples); logits sliced to `vocab`."""

    def __init__(self, model: nn.Module, vocab: int):
        self.model = model.eval().requires_grad_(False)
        self.vocab = vocab

    @torch.no_grad()  # not inference_mode: chunked losses save these tensors for their backward
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        return TeacherOutput(logits=teacher_logits(self.model, batch, self.vocab))


def teacher_logits(model: nn.Module, batch: dict[str, torch.Tensor], vocab: int) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits[..., :vocab].float()  # (B, L, V)


def topk_of(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k log-probs, their ids, and the log of the mass outside them (exact, via logsumexp)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    values, indices = log_probs.topk(k, dim=-1)
    rest = log_probs.scatter(-1, indices, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1, keepdim=True).clamp_min(-1e3) if k < logits.shape[-1] \
        else torch.full_like(values[..., :1], -1e3)
    return values, indices, tail


class TopKCache:
    """The teacher's top-k log-probs over a corpus's blocks, looked up by block index."""

    def __init__(self, cache: ShardedCache):
        self.cache, self.directory, self.manifest = cache, cache.directory, cache.manifest

    @property
    def bytes_per_token(self) -> float:
        """Bytes per stored position (a padded corpus stores only its real tokens)."""
        tokens = self.manifest.get("real_tokens") or self.manifest["rows"] * self.manifest["seq_len"]
        return self.cache.nbytes / tokens

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        device = batch["input_ids"].device
        rows = self._ragged(batch["index"]) if self.manifest.get("layout") == "ragged" else \
            self.cache.rows(batch["index"])
        return TeacherOutput(topk_logprobs=rows["logprobs"].to(device),
                             topk_indices=(rows["indices"].long() + self.manifest["index_offset"]).to(device),
                             tail_logprob=rows["tail"].to(device))

    def _ragged(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows of a cache that holds only the real (unpadded) positions, padded back to seq_len with a
        neutral, finite filler (half the mass spread over the k ids, half in the tail): the loss masks
        those positions, so only their finiteness matters."""
        spans, seq_len = self.cache.spans(index), self.manifest["seq_len"]
        k = self.manifest["k"]
        out = {"logprobs": torch.full((len(spans), seq_len, k), math.log(0.5 / k), dtype=torch.float16),
               "indices": torch.arange(k, dtype=torch.int64).expand(len(spans), seq_len, k).clone(),
               "tail": torch.full((len(spans), seq_len, 1), math.log(0.5), dtype=torch.float16)}
        out["indices"] -= self.manifest["index_offset"]
        for i, span in enumerate(spans):
            n = len(span["tail"])
            out["logprobs"][i, :n], out["indices"][i, :n], out["tail"][i, :n] = \
                span["logprobs"], span["indices"].long(), span["tail"]
        return out

    @classmethod
    def build_or_open(cls, teacher: Any, data: TokenBlocks, directory: Path, *, identity: dict[str, Any],
                      batch_size: int = 8, rebuild: bool = False, quiet: bool = False,
                      device: torch.device | str = "cpu") -> TopKCache:
        """Open the cache for (teacher, tokenizer, k, corpus) in `directory`, building what is missing.

        `teacher` is the model itself, or a `distill.teachers.endpoint.EndpointTopK` asking a server.
        `identity` holds teacher (id), tokenizer (fingerprint), k and vocab; the corpus fingerprint
        and shape come from `data`.
        """
        k, vocab = identity["k"], identity["vocab"]
        offset = _index_offset(vocab)
        index_dtype = torch.int16 if vocab <= 65536 else torch.int32

        lengths = data.attention_mask.sum(-1)  # real tokens per block (blocks are padded on the right)
        ragged = bool((lengths < data.seq_len).any())  # padded blocks: their padding is not stored

        local = isinstance(teacher, nn.Module)  # else an `EndpointTopK`: a teacher behind an HTTP endpoint

        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
            model = teacher.eval().requires_grad_(False).to(device) if local else None
            parts = []
            for b in range(start, stop, batch_size):
                rows = torch.arange(b, min(stop, b + batch_size))
                if not local:
                    parts.append(teacher.rows(data.input_ids[rows], lengths[rows]))
                    continue
                batch = {k_: v.to(device) for k_, v in data.batch(rows).items()}
                with torch.inference_mode():
                    parts.append(topk_of(teacher_logits(model, batch, vocab), k))
            lp, idx, tail = (torch.cat(p).cpu() for p in zip(*parts))
            rows = {"logprobs": lp.half(), "indices": (idx - offset).to(index_dtype), "tail": tail.half()}
            if not ragged:
                return rows
            kept = lengths[start:stop]
            real = torch.arange(data.seq_len) < kept[:, None]  # (rows, T)
            return {**{name: t[real] for name, t in rows.items()}, "lengths": kept.int()}

        full = {**identity, "corpus": data.fingerprint(), "seq_len": data.seq_len, "index_offset": offset,
                **({"layout": "ragged", "real_tokens": int(lengths.sum())} if ragged else {})}
        return cls(ShardedCache.build_or_open(directory, full, len(data), compute, shard_rows=SHARD_ROWS,
                                              rebuild=rebuild, quiet=quiet, unit="block"))


def _index_offset(vocab: int) -> int:
    """Ids are stored as int16 minus this offset: 32768 for vocabularies of 32,769–65,536 tokens."""
    return 32768 if 32768 < vocab <= 65536 else 0
