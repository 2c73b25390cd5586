"""Classifier teachers: a live model run on each batch, or its logits cached once per dataset.

Both answer `signal(batch) -> TeacherOutput` (`distill.teachers.output`), so training cannot tell
whether a live teacher computed the logits now or a cache computed them once; the cache is the one
every teacher signal uses (`distill.teachers.cache`), under `<cache_dir>/<fingerprint>/`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.data.batches import collate_rows
from distill.models.zoo import freeze, logits_of
from distill.teachers.cache import ShardedCache
from distill.teachers.output import TeacherOutput

SHARD_ROWS = 65536
CACHE_FORMAT = 1


class LiveTeacher:
    """Runs the frozen teacher (eval mode, no grad) on each batch: it sees exactly what the student sees."""

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    @torch.no_grad()
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        """The teacher's logits; the batch's `labels` reach teachers that weigh themselves by them (ensembles)."""
        targets = batch.get("labels")
        if targets is not None and getattr(self.model, "uses_targets", False):
            return TeacherOutput(logits_of(self.model(batch["inputs"], targets=targets)).float())
        return TeacherOutput(logits_of(self.model(batch["inputs"])).float())


class CachedTeacher:
    """Teacher logits computed once over a dataset, stored on disk, and looked up by example index."""

    def __init__(self, cache: ShardedCache | None, directory: Path, table: torch.Tensor | None = None):
        self.cache, self.directory = cache, directory
        self._table = table  # logits held in memory (out-of-fold targets): no files

    @classmethod
    def from_table(cls, table: torch.Tensor, directory: Path) -> CachedTeacher:
        """Logits already computed, one row per example (e.g. out-of-fold targets)."""
        return cls(None, directory, table)

    @property
    def table(self) -> torch.Tensor:
        """Every example's logits, in dataset order, as stored."""
        if self._table is not None:
            return self._table
        return self.cache.rows(torch.arange(self.cache.manifest["rows"]))["logits"]  # type: ignore[union-attr]

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        index = batch["index"]
        rows = self._table[index.cpu()] if self._table is not None else self.cache.rows(index)["logits"]  # type: ignore[union-attr]
        return TeacherOutput(rows.to(batch["inputs"].device, torch.float32))

    @classmethod
    def build_or_load(cls, teacher: nn.Module, dataset: Dataset, cache_root: Path, *,
                      batch_size: int = 512, dtype: torch.dtype = torch.float32,
                      rebuild: bool = False, quiet: bool = False) -> CachedTeacher:
        """Reuse the cache for this (teacher, dataset, dtype) if present and intact, else build it.

        Shards are written atomically one by one, each recorded in the manifest, so an interrupted build
        resumes with the shards already done; a shard whose checksum does not match is named in the error
        (or rebuilt when `rebuild` is set), never used.
        """
        key = fingerprint(teacher, dataset, dtype)
        directory = Path(cache_root) / key
        teacher = freeze(teacher)

        @torch.no_grad()
        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
            device = next(teacher.parameters()).device
            part = torch.utils.data.Subset(dataset, range(start, stop))
            rows = [logits_of(teacher(b["inputs"].to(device))).float().cpu()
                    for b in DataLoader(part, batch_size=batch_size, collate_fn=collate_rows)]
            return {"logits": torch.cat(rows).to(dtype)}

        identity = {"signal": "logits", "key": key, "dtype": str(dtype), "teacher": type(teacher).__name__}
        cache = ShardedCache.build_or_open(directory, identity, len(dataset), compute,  # type: ignore[arg-type]
                                           shard_rows=SHARD_ROWS, rebuild=rebuild, quiet=quiet, unit="example")
        return cls(cache, directory)


def fingerprint(teacher: nn.Module, dataset: Dataset, dtype: torch.dtype) -> str:
    """Hash of the teacher's weights, the dataset's examples and the storage dtype."""
    h = hashlib.sha256(f"format={CACHE_FORMAT};dtype={dtype};n={len(dataset)}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    inputs = getattr(dataset, "inputs", None)
    if isinstance(inputs, torch.Tensor):
        h.update(inputs.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    else:  # generic datasets: hash every example once
        for i in range(len(dataset)):  # type: ignore[arg-type]
            h.update(torch.as_tensor(dataset[i]["inputs"]).numpy().tobytes())
    return h.hexdigest()[:16]
