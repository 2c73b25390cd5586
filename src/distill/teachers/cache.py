"""One on-disk cache for every teacher signal: rows of named tensors (a classifier's logits; a language
model's top-k log-probs, ids and tail mass), one row per dataset example, looked up by index.

    manifest.json              format, what the rows were computed from (`identity`), rows, shard size,
                               and each finished shard with its row range and sha256 — rewritten
                               atomically after every shard, so an interrupted build resumes there
    shard-00000.safetensors …  written atomically (temporary name, then renamed), one at a time

A shard whose checksum fails, or a manifest made for something else (another teacher, tokenizer, k,
dataset, dtype), is named in an error and never read; `rebuild=True` recomputes what is wrong.
Small caches are read into memory once; larger ones are memory-mapped and read row by row.

Hand-written on safetensors because no maintained library offers this combination: `datasets`'
Arrow cache neither resumes a half-built table nor checks its shards, and plain `torch.save` files
are neither atomic per shard nor safe to load.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm

from distill.core.errors import CheckpointError
from distill.core.files import atomic_save_tensors, atomic_write_text, make_private_dir, sha256_file

FORMAT = 1
IN_MEMORY_BYTES = 256 * 2**20  # caches up to this size are read whole: a lookup is then one index

Compute = Callable[[int, int], dict[str, torch.Tensor]]  # (start, stop) → each name's rows start..stop


class ShardedCache:
    """The read side: rows by dataset index, from memory or from memory-mapped shards."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory, self.manifest = directory, manifest
        self._starts = torch.tensor([s["start"] for s in manifest["shards"]])
        self._handles: dict[str, Any] = {}
        self._ragged: dict[str, torch.Tensor] = {}
        self.tables: dict[str, torch.Tensor] | None = None
        if self.nbytes <= IN_MEMORY_BYTES:
            shards = [load_file(str(directory / s["file"])) for s in manifest["shards"]]
            self.tables = {name: torch.cat([s[name] for s in shards]) for name in shards[0]} if shards else {}

    @property
    def nbytes(self) -> int:
        return sum((self.directory / s["file"]).stat().st_size for s in self.manifest["shards"])

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each stored tensor's rows at `index` (B,), on the CPU."""
        index = self._checked(index)
        if self.tables is not None:
            return {name: table[index] for name, table in self.tables.items()}
        rows = [self._row(int(i)) for i in index]
        return {name: torch.stack([r[name] for r in rows]) for name in rows[0]} if rows else {}

    def spans(self, index: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The rows at `index` of a ragged cache, whose `lengths` tensor gives each row's entry count
        and whose other tensors hold the rows' entries end to end (shard by shard)."""
        index = self._checked(index)
        out = []
        for i in index.tolist():
            if self.tables is not None:
                start, stop = self._offsets(None)[i], self._offsets(None)[i + 1]
                out.append({k: t[start:stop] for k, t in self.tables.items() if k != "lengths"})
                continue
            shard = self.manifest["shards"][int(torch.searchsorted(self._starts, i, right=True)) - 1]
            handle = self._handle(shard["file"])
            offsets = self._offsets(shard)
            start, stop = int(offsets[i - shard["start"]]), int(offsets[i - shard["start"] + 1])
            out.append({k: handle.get_slice(k)[start:stop] for k in handle.keys() if k != "lengths"})
        return out

    def _checked(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu().long()
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.manifest["rows"]):
            bad = int(index[(index < 0) | (index >= self.manifest["rows"])][0])
            raise CheckpointError(f"Teacher cache {self.directory} has {self.manifest['rows']} rows; row {bad} was "
                                  "asked for: the dataset is not the one the cache was built on.")
        return index

    def _offsets(self, shard: dict[str, Any] | None) -> torch.Tensor:
        """Where each row's entries start (and the last ends): of the whole cache in memory, or of one shard."""
        key = shard["file"] if shard else ""
        if key not in self._ragged:
            lengths = self.tables["lengths"] if shard is None else self._handle(key).get_tensor("lengths")
            self._ragged[key] = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).long()
        return self._ragged[key]

    def _handle(self, file: str) -> Any:
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.directory / file), "pt")
        return self._handles[file]

    def _row(self, i: int) -> dict[str, torch.Tensor]:
        shard = self.manifest["shards"][int(torch.searchsorted(self._starts, i, right=True)) - 1]
        handle = self._handle(shard["file"])
        return {name: handle.get_slice(name)[i - shard["start"]] for name in handle.keys()}

    @classmethod
    def build_or_open(cls, directory: Path, identity: dict[str, Any], rows: int, compute: Compute, *,
                      shard_rows: int, rebuild: bool = False, quiet: bool = False, unit: str = "row") -> ShardedCache:
        """Open the cache of `identity` in `directory`, computing the shards that are missing.

        `identity`: what the rows depend on (a different value is a different cache); `compute(start,
        stop)`: the rows of one shard.
        """
        expected = {"format": FORMAT, **identity, "rows": rows, "shard_rows": shard_rows}
        manifest = _open_manifest(directory, expected, rebuild)
        good = {s["start"] // shard_rows: s for s in _verified_shards(directory, manifest, rebuild, quiet)}
        missing = [n for n in range(-(-rows // shard_rows)) if n not in good]
        if good and not quiet:
            done = sum(s["stop"] - s["start"] for s in good.values())
            print(f"teacher cache {directory}: found, {len(good)} shard(s) verified ({done:,} of {rows:,} "
                  f"{unit}s)" + (f"; computing the other {len(missing)}" if missing else ""), file=sys.stderr)
        if missing:
            make_private_dir(directory)
            bar = tqdm(total=rows, initial=rows - sum(min(rows, (n + 1) * shard_rows) - n * shard_rows
                                                      for n in missing),
                       desc="teacher cache", unit=unit, disable=quiet, leave=False)
            for number in missing:
                start, stop = number * shard_rows, min(rows, (number + 1) * shard_rows)
                name = f"shard-{number:05d}.safetensors"
                atomic_save_tensors(directory / name, compute(start, stop), {"rows": f"{start}:{stop}"})
                good[number] = {"file": name, "start": start, "stop": stop, "sha256": sha256_file(directory / name)}
                manifest["shards"] = [good[n] for n in sorted(good)]
                atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))  # resumable here
                bar.update(stop - start)
            bar.close()
        if not manifest.get("complete"):
            manifest["shards"], manifest["complete"] = [good[n] for n in sorted(good)], True
            atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
        return cls(directory, manifest)


def _open_manifest(directory: Path, expected: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        return {**expected, "shards": [], "complete": False}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        saved = {}
    wrong = [k for k in expected if saved.get(k) != expected[k]]
    if wrong and not rebuild:
        old = "shard_rows" not in saved and saved.get("shards")
        details = ("it was written by an earlier version of distill" if old else "; ".join(
            f"{k}: cache {saved.get(k)!r}, this run {expected[k]!r}" for k in wrong))
        raise CheckpointError(f"Teacher cache {directory} was built for something else ({details}). Set "
                              "teacher.cache_rebuild=true to replace it (rebuild=True in Python), or point "
                              "teacher.cache_dir at another directory.")
    if wrong:
        shutil.rmtree(directory)
        return {**expected, "shards": [], "complete": False}
    return saved


def _verified_shards(directory: Path, manifest: dict[str, Any], rebuild: bool,
                     quiet: bool = True) -> list[dict[str, Any]]:
    """The shards whose files exist with the recorded checksum; with `rebuild`, the others are dropped
    (and recomputed by the caller), otherwise the first bad one is an error."""
    good = []
    shards = manifest["shards"]
    for shard in tqdm(shards, desc="verify teacher cache", unit="shard", leave=False, disable=quiet or not shards):
        path = directory / shard["file"]
        problem = ("is missing" if not path.is_file() else
                   "fails its sha256 check (truncated or corrupted)" if sha256_file(path) != shard["sha256"] else None)
        if problem is None:
            good.append(shard)
        elif not rebuild:
            raise CheckpointError(f"Teacher cache {directory} is corrupt: shard {path.name} {problem}; it was not "
                                  "used. Set teacher.cache_rebuild=true to recompute it (rebuild=True in Python; "
                                  "the good shards are kept).")
        else:
            manifest["complete"] = False
    return good
