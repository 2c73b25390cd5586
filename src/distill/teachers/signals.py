"""Teacher signals: what the student learns from, behind one interface.

Training asks a signal for the teacher's logits on a batch (``inputs`` plus each example's
dataset ``index``) and cannot tell whether a live teacher computed them now or a cache
computed them once. Later signal kinds (top-k LLM caches, generated text, remote teachers)
present the same interface.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from distill.core.errors import CheckpointError
from distill.core.files import atomic_save_tensors, atomic_write_text, make_private_dir, sha256_file
from distill.data.batches import collate_rows
from distill.models.zoo import freeze, logits_of

SHARD_ROWS = 65536
CACHE_FORMAT = 1


class TeacherSignal(Protocol):
    def logits(self, inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher logits (B, C) for a batch of inputs (B, ...) with dataset indices (B,) and, for
        teachers that use them, the batch's targets."""
        ...


class LiveTeacher:
    """Runs the frozen teacher (eval mode, no grad) on each batch: it sees exactly what the student sees."""

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits; `targets` reach teachers that weigh themselves by the labels (ensembles)."""
        if targets is not None and getattr(self.model, "uses_targets", False):
            return logits_of(self.model(inputs, targets=targets)).float()
        return logits_of(self.model(inputs)).float()


class CachedTeacher:
    """Teacher logits computed once over a dataset, stored on disk, and looked up by example index."""

    def __init__(self, table: torch.Tensor, directory: Path):
        self.table = table
        self.directory = directory

    def logits(self, inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[index.cpu()].to(inputs.device, torch.float32)

    @classmethod
    def build_or_load(cls, teacher: nn.Module, dataset: Dataset, cache_root: Path, *,
                      batch_size: int = 512, dtype: torch.dtype = torch.float32,
                      rebuild: bool = False, quiet: bool = False) -> CachedTeacher:
        """Reuse the cache for this (teacher, dataset, dtype) if present and intact, else build it.

        Shards are written atomically one by one and the manifest last, so an interrupted build
        resumes with the shards already done; a shard whose checksum does not match the manifest
        is named in the error (or rebuilt when `rebuild` is set), never used.
        """
        key = fingerprint(teacher, dataset, dtype)
        directory = Path(cache_root) / key
        manifest_path = directory / "manifest.json"
        if manifest_path.is_file():
            bad = verify(directory)
            if not bad:
                return cls(_load_table(directory), directory)
            if not rebuild:
                raise CheckpointError(
                    f"Teacher cache {directory} is corrupt: shard(s) {bad} do not match the checksums "
                    "in manifest.json. Rebuild with teacher.cache_rebuild=true (or delete the directory)."
                )
            for name in bad:
                (directory / name).unlink(missing_ok=True)
        _build(teacher, dataset, directory, key, batch_size, dtype, quiet)
        return cls(_load_table(directory), directory)


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


def verify(directory: Path) -> list[str]:
    """Names of shards that are missing or whose sha256 differs from the manifest."""
    manifest = json.loads((directory / "manifest.json").read_text())
    return [s["file"] for s in manifest["shards"]
            if not (directory / s["file"]).is_file() or sha256_file(directory / s["file"]) != s["sha256"]]


@torch.no_grad()
def _build(teacher: nn.Module, dataset: Dataset, directory: Path, key: str, batch_size: int,
           dtype: torch.dtype, quiet: bool) -> None:
    make_private_dir(directory)
    teacher = freeze(teacher)
    device = next(teacher.parameters()).device
    n = len(dataset)  # type: ignore[arg-type]
    shards = []
    for start in tqdm(range(0, n, SHARD_ROWS), desc="teacher cache", disable=quiet, leave=False):
        stop = min(start + SHARD_ROWS, n)
        name = f"logits-{start:09d}-{stop:09d}.safetensors"
        path = directory / name
        if not path.is_file():  # shards written by an interrupted build are reused
            part = torch.utils.data.Subset(dataset, range(start, stop))
            rows = [logits_of(teacher(b["inputs"].to(device))).float().cpu()
                    for b in DataLoader(part, batch_size=batch_size, collate_fn=collate_rows)]
            atomic_save_tensors(path, {"logits": torch.cat(rows).to(dtype)}, {"start": str(start)})
        shards.append({"file": name, "start": start, "stop": stop, "sha256": sha256_file(path)})
    manifest = {"format": CACHE_FORMAT, "key": key, "rows": n, "dtype": str(dtype),
                "teacher": type(teacher).__name__, "shards": shards}
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2))


def _load_table(directory: Path) -> torch.Tensor:
    manifest = json.loads((directory / "manifest.json").read_text())
    return torch.cat([load_file(str(directory / s["file"]))["logits"] for s in manifest["shards"]])
