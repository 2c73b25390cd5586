"""Teacher signals: the cache is built once, verified, resumable, and equal to the live teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import distill.teachers.signals
from distill.core.errors import CheckpointError
from distill.data.arrays import ArrayDataset
from distill.teachers.signals import CachedTeacher, LiveTeacher, fingerprint


class CountingTeacher(nn.Module):
    """A tiny linear teacher that counts the examples it has seen."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
        self.rows_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen += len(x)
        return self.net(x)


@pytest.fixture
def dataset() -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randn(23, 6, generator=g), torch.randint(0, 4, (23,), generator=g))


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(distill.teachers.signals, "SHARD_ROWS", 5)  # 23 rows → 5 shards


def _live(teacher: nn.Module, ds: ArrayDataset) -> torch.Tensor:
    with torch.no_grad():
        return teacher.net(ds.inputs)


def test_cache_is_built_once_then_reused(tmp_path: Path, dataset):
    teacher = CountingTeacher()
    first = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    assert teacher.rows_seen == len(dataset)
    second = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    assert teacher.rows_seen == len(dataset)  # not run again
    assert second.directory == first.directory
    assert (first.directory / "manifest.json").is_file()
    torch.testing.assert_close(second.table, _live(teacher, dataset), rtol=0, atol=1e-6)


def test_cached_logits_equal_the_live_teachers(tmp_path: Path, dataset):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, batch_size=4, quiet=True)
    live = LiveTeacher(teacher)
    index = torch.tensor([22, 0, 7, 7])
    inputs = dataset.inputs[index]
    batch = {"inputs": inputs, "index": index}
    torch.testing.assert_close(cached.signal(batch).logits, live.signal(batch).logits, rtol=0, atol=1e-6)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_cache_manifest_describes_shards(tmp_path: Path, dataset, small_shards):
    cached = CachedTeacher.build_or_load(CountingTeacher(), dataset, tmp_path, quiet=True)
    manifest = json.loads((cached.directory / "manifest.json").read_text())
    assert manifest["rows"] == 23
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 5), (5, 10), (10, 15), (15, 20),
                                                                      (20, 23)]
    assert cached.table.shape == (23, 4)


def test_corrupt_shard_is_named_and_never_used(tmp_path: Path, dataset, small_shards):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    shard = cached.directory / "shard-00002.safetensors"  # rows 10..14
    raw = bytearray(shard.read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"  # flip the last float to +inf
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as exc:
        CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    assert shard.name in str(exc.value)
    assert "cache_rebuild" in str(exc.value)


def test_rebuild_recomputes_only_the_corrupt_shard(tmp_path: Path, dataset, small_shards):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    shard = cached.directory / "shard-00004.safetensors"  # rows 20..22
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated
    teacher.rows_seen = 0
    rebuilt = CachedTeacher.build_or_load(teacher, dataset, tmp_path, rebuild=True, quiet=True)
    assert teacher.rows_seen == 3
    torch.testing.assert_close(rebuilt.table, _live(teacher, dataset), rtol=0, atol=1e-6)
    teacher.rows_seen = 0
    CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)  # every checksum holds now
    assert teacher.rows_seen == 0


def test_interrupted_build_resumes_with_existing_shards(tmp_path: Path, dataset, small_shards):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    # as a build killed after its third shard leaves it: the manifest records shards 0..2 only
    manifest = json.loads((cached.directory / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:3], False
    (cached.directory / "manifest.json").write_text(json.dumps(manifest))
    (cached.directory / "shard-00004.safetensors").unlink()
    teacher.rows_seen = 0
    resumed = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    assert teacher.rows_seen == 8  # only rows 15..22
    torch.testing.assert_close(resumed.table, _live(teacher, dataset), rtol=0, atol=1e-6)


def test_a_corrupt_middle_shard_is_the_only_one_recomputed(tmp_path: Path, dataset, small_shards):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    (cached.directory / "shard-00001.safetensors").write_bytes(b"not a shard")
    teacher.rows_seen = 0
    rebuilt = CachedTeacher.build_or_load(teacher, dataset, tmp_path, rebuild=True, quiet=True)
    assert teacher.rows_seen == 5  # rows 5..9, not the shards after it
    torch.testing.assert_close(rebuilt.table, _live(teacher, dataset), rtol=0, atol=1e-6)


def test_a_cache_from_an_earlier_version_is_refused_with_how_to_rebuild(tmp_path: Path, dataset):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    old = {"format": 1, "key": cached.directory.name, "rows": 23, "dtype": "torch.float32", "teacher": "x",
           "shards": [{"file": "logits-000000000-000000023.safetensors", "start": 0, "stop": 23, "sha256": "0"}]}
    (cached.directory / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="earlier version of distill.*cache_rebuild=true"):
        CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    assert CachedTeacher.build_or_load(teacher, dataset, tmp_path, rebuild=True, quiet=True).table.shape == (23, 4)


def test_different_teacher_or_data_gives_different_cache(tmp_path: Path, dataset):
    a = CachedTeacher.build_or_load(CountingTeacher(seed=0), dataset, tmp_path, quiet=True)
    b = CachedTeacher.build_or_load(CountingTeacher(seed=1), dataset, tmp_path, quiet=True)
    assert a.directory != b.directory
    assert not torch.equal(a.table, b.table)
    other = ArrayDataset(dataset.inputs + 1, dataset.labels)
    assert fingerprint(CountingTeacher(seed=0), other, torch.float32) != a.directory.name
    assert fingerprint(CountingTeacher(seed=0), dataset, torch.float16) != a.directory.name
    assert fingerprint(CountingTeacher(seed=0), dataset, torch.float32) == a.directory.name


def test_half_precision_cache_is_stored_and_served_as_float32(tmp_path: Path, dataset):
    teacher = CountingTeacher()
    cached = CachedTeacher.build_or_load(teacher, dataset, tmp_path, dtype=torch.float16, quiet=True)
    assert cached.table.dtype == torch.float16
    index = torch.arange(4)
    out = cached.signal({"inputs": dataset.inputs[index], "index": index}).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _live(teacher, dataset)[:4], rtol=1e-3, atol=1e-3)


def test_an_existing_cache_says_it_was_found_and_verified(tmp_path: Path, dataset, small_shards, capsys):
    teacher = CountingTeacher()
    CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=True)
    capsys.readouterr()
    CachedTeacher.build_or_load(teacher, dataset, tmp_path, quiet=False)
    err = capsys.readouterr().err
    assert "found, 5 shard(s) verified (23 of 23 examples)" in err and "computing" not in err
