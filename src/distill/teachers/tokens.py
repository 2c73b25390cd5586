"""Token-level teacher signals for LM distillation: a live teacher, or an offline top-k cache.

Both answer `signal(batch) -> TokenSignal`, so training cannot tell them apart.

The cache stores, for every position of every training block, the teacher's top-k log-probs
(float16), their token ids (int16 when the vocabulary allows, else int32) and the log of the
remaining tail mass (float16): 4k + 2 bytes per token. Files:

  manifest.json        teacher id, tokenizer fingerprint, k, vocab, dtypes, corpus fingerprint,
                       and each finished shard with its row range and sha256 (rewritten, atomically,
                       after every shard, so an interrupted build resumes where it stopped)
  shard-00000.safetensors …

A shard whose checksum fails, or a manifest made for another teacher, tokenizer, k or corpus,
is named in an error and never read; `rebuild=True` recomputes what is wrong.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from distill.core.errors import CheckpointError
from distill.core.files import atomic_save_tensors, atomic_write_text, make_private_dir, sha256_file
from distill.data.tokens import TokenBlocks

CACHE_FORMAT = 1
SHARD_ROWS = 256  # blocks per shard (256 × 128 tokens × 258 B ≈ 8 MB at k = 64)
MATCHED = ("teacher", "tokenizer", "k", "vocab", "corpus", "seq_len", "format")


@dataclass
class TokenSignal:
    """The teacher's view of a batch: full logits, or sparse top-k (+ tail), each (B, L, ·)."""

    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    tail_logprob: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        return {"teacher_logits": self.logits, "teacher_topk_logprobs": self.topk_logprobs,
                "teacher_topk_indices": self.topk_indices, "teacher_tail_logprob": self.tail_logprob}


class TokenTeacher(Protocol):
    def signal(self, batch: dict[str, torch.Tensor]) -> TokenSignal:
        """Teacher signal for a batch with input_ids, attention_mask (B, L) and dataset `index` (B,)."""
        ...


class LiveLMTeacher:
    """The frozen teacher runs on every batch (needed for on-policy samples); logits sliced to `vocab`."""

    def __init__(self, model: nn.Module, vocab: int):
        self.model = model.eval().requires_grad_(False)
        self.vocab = vocab

    @torch.no_grad()  # not inference_mode: chunked losses save these tensors for their backward
    def signal(self, batch: dict[str, torch.Tensor]) -> TokenSignal:
        return TokenSignal(logits=teacher_logits(self.model, batch, self.vocab))


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


# --------------------------------------------------------------------------- the cache


class TopKCache:
    """Read side of the cache: rows looked up by dataset index from memory-mapped shards."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory, self.manifest = directory, manifest
        self._handles: dict[str, Any] = {}
        self._starts = torch.tensor([s["start"] for s in manifest["shards"]])

    @property
    def bytes_per_token(self) -> float:
        total = sum((self.directory / s["file"]).stat().st_size for s in self.manifest["shards"])
        return total / (self.manifest["rows"] * self.manifest["seq_len"])

    def signal(self, batch: dict[str, torch.Tensor]) -> TokenSignal:
        device = batch["input_ids"].device
        rows = [self._row(int(i)) for i in batch["index"].cpu()]
        lp, idx, tail = (torch.stack(parts) for parts in zip(*rows))
        offset = self.manifest["index_offset"]
        return TokenSignal(topk_logprobs=lp.to(device), topk_indices=(idx.long() + offset).to(device),
                           tail_logprob=tail.to(device))

    def _row(self, i: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= i < self.manifest["rows"]:
            raise CheckpointError(f"Teacher cache {self.directory} has {self.manifest['rows']} rows; row {i} "
                                  "was asked for: the dataset is not the one the cache was built on.")
        shard = self.manifest["shards"][int(torch.searchsorted(self._starts, i, right=True)) - 1]
        handle = self._handles.get(shard["file"])
        if handle is None:
            handle = self._handles[shard["file"]] = safe_open(str(self.directory / shard["file"]), "pt")
        j = i - shard["start"]
        return tuple(handle.get_slice(name)[j] for name in ("logprobs", "indices", "tail"))

    @classmethod
    def build_or_open(cls, teacher: nn.Module, data: TokenBlocks, directory: Path, *, identity: dict[str, Any],
                      batch_size: int = 8, rebuild: bool = False, quiet: bool = False,
                      device: torch.device | str = "cpu") -> TopKCache:
        """Open the cache for (teacher, tokenizer, k, corpus) in `directory`, building what is missing.

        `identity` holds teacher (id), tokenizer (fingerprint), k and vocab; the corpus fingerprint
        and shape come from `data`.
        """
        expected = {"format": CACHE_FORMAT, **identity, "corpus": data.fingerprint(), "seq_len": data.seq_len,
                    "rows": len(data), "shard_rows": SHARD_ROWS}
        manifest = _open_manifest(directory, expected, rebuild)
        good = _verified_shards(directory, manifest, rebuild)
        if len(good) < _num_shards(len(data)):
            good = _build_missing(teacher, data, directory, manifest, good, batch_size, quiet, device)
        manifest["shards"], manifest["complete"] = good, True
        atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
        return cls(directory, manifest)


def _num_shards(rows: int) -> int:
    return -(-rows // SHARD_ROWS)


def _open_manifest(directory: Path, expected: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        return {**expected, "index_offset": _index_offset(expected["vocab"]), "shards": [], "complete": False}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        saved = {}
    wrong = [k for k in MATCHED if saved.get(k) != expected.get(k)]
    if wrong and not rebuild:
        details = "; ".join(f"{k}: cache {saved.get(k)!r}, this run {expected.get(k)!r}" for k in wrong)
        raise CheckpointError(f"Teacher cache {directory} was built for something else ({details}). "
                              "Point teacher.cache_dir at another directory, or set teacher.cache_rebuild=true "
                              "to replace it.")
    if wrong:
        shutil.rmtree(directory)
        return _open_manifest(directory, expected, rebuild=False)
    return saved


def _index_offset(vocab: int) -> int:
    """Ids are stored as int16 minus this offset: 32768 for vocabularies of 32,769–65,536 tokens."""
    return 32768 if 32768 < vocab <= 65536 else 0


def _verified_shards(directory: Path, manifest: dict[str, Any], rebuild: bool) -> list[dict[str, Any]]:
    """The shards whose files exist with the recorded checksum, in order, up to the first bad one."""
    good = []
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        problem = ("is missing" if not path.is_file()
                   else "fails its sha256 check (truncated or corrupted)" if sha256_file(path) != shard["sha256"] else None)
        if problem is None:
            good.append(shard)
            continue
        if not rebuild:
            raise CheckpointError(f"Teacher cache shard {path} {problem}; it was not used. Set "
                                  "teacher.cache_rebuild=true to recompute it (other shards are kept).")
        break
    return good


def _build_missing(teacher: nn.Module, data: TokenBlocks, directory: Path, manifest: dict[str, Any],
                   good: list[dict[str, Any]], batch_size: int, quiet: bool, device: Any) -> list[dict[str, Any]]:
    make_private_dir(directory)
    teacher = teacher.eval().requires_grad_(False).to(device)
    k, vocab, offset = manifest["k"], manifest["vocab"], manifest["index_offset"]
    index_dtype = torch.int16 if vocab <= 65536 else torch.int32
    total = _num_shards(len(data))
    bar = tqdm(total=len(data), initial=len(good) * SHARD_ROWS, desc="teacher cache", unit="block", disable=quiet)
    for number in range(len(good), total):
        start, stop = number * SHARD_ROWS, min(len(data), (number + 1) * SHARD_ROWS)
        parts: list[tuple[torch.Tensor, ...]] = []
        for b in range(start, stop, batch_size):
            batch = {k_: v.to(device) for k_, v in data.batch(torch.arange(b, min(stop, b + batch_size))).items()}
            with torch.inference_mode():
                parts.append(topk_of(teacher_logits(teacher, batch, vocab), k))
            bar.update(len(batch["index"]))
        lp, idx, tail = (torch.cat(p) for p in zip(*parts))
        tensors = {"logprobs": lp.half(), "indices": (idx - offset).to(index_dtype), "tail": tail.half()}
        name = f"shard-{number:05d}.safetensors"
        atomic_save_tensors(directory / name, tensors, {"rows": f"{start}:{stop}"})
        good.append({"file": name, "start": start, "stop": stop, "sha256": sha256_file(directory / name)})
        manifest["shards"] = good
        atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))  # resumable from here
    bar.close()
    return good
