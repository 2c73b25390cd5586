"""Checkpoints: safetensors roundtrips, clear errors, atomic writes, exact training state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import distill.core.files
from distill.core.checkpoint import (
    load_training_state,
    load_weights,
    read_metadata,
    save_training_state,
    save_weights,
)
from distill.core.errors import CheckpointError


def _mlp(seed: int, hidden: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, 3))


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_weights_roundtrip_with_metadata(tmp_path: Path):
    src, dst = _mlp(0), _mlp(1)
    src[2].running_mean.fill_(0.5)  # buffers travel too
    save_weights(tmp_path / "m.safetensors", src, {"stage": "teacher", "epoch": 3})
    meta = load_weights(tmp_path / "m.safetensors", dst)
    _assert_same_state(src, dst)
    assert meta == {"stage": "teacher", "epoch": 3}
    assert read_metadata(tmp_path / "m.safetensors") == meta


def test_loading_into_another_architecture_names_the_mismatch(tmp_path: Path):
    save_weights(tmp_path / "m.safetensors", _mlp(0, hidden=6))
    with pytest.raises(CheckpointError) as exc:
        load_weights(tmp_path / "m.safetensors", _mlp(0, hidden=5))
    msg = str(exc.value)
    assert "different architecture" in msg and "shape mismatch" in msg
    assert "0.weight" in msg and "(6, 4)" in msg and "(5, 4)" in msg

    with pytest.raises(CheckpointError, match=r"missing \['1.bias', '1.weight'\]; unexpected"):
        load_weights(tmp_path / "m.safetensors", nn.Sequential(nn.Identity(), nn.Linear(4, 3)))


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "absent.safetensors", _mlp(0))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_a_checkpoint_error(tmp_path: Path, damage: str):
    path = tmp_path / "m.safetensors"
    save_weights(path, _mlp(0))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00" * 7 + b"not a checkpoint")
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_weights(path, _mlp(0))


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_state_restores_optimizer_scheduler_and_rng(tmp_path: Path):
    model = _mlp(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_steps(model, opt, 3)
    sched.step()
    sched.step()
    torch.manual_seed(99)
    save_training_state(tmp_path / "last.safetensors", model=model, optimizer=opt, scheduler=sched,
                        state={"epoch": 4, "history": [{"loss": 0.25}]})
    expected_draw = torch.rand(5)

    model2 = _mlp(7)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    torch.manual_seed(0)
    state = load_training_state(tmp_path / "last.safetensors", model=model2, optimizer=opt2, scheduler=sched2)

    assert state == {"epoch": 4, "history": [{"loss": 0.25}]}
    assert torch.equal(torch.rand(5), expected_draw)  # RNG continues where it was saved
    _assert_same_state(model, model2)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        s, s2 = opt.state[p], opt2.state[p2]
        assert torch.equal(s["exp_avg"], s2["exp_avg"]) and torch.equal(s["exp_avg_sq"], s2["exp_avg_sq"])
        assert int(s["step"]) == int(s2["step"]) == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert sched2.last_epoch == 2
    # and both continue identically
    _train_steps(model, opt, 2)
    _train_steps(model2, opt2, 2)
    _assert_same_state(model, model2)


def test_save_leaves_no_temp_files(tmp_path: Path):
    model = _mlp(0)
    save_weights(tmp_path / "a.safetensors", model)
    save_weights(tmp_path / "a.safetensors", model)  # overwrite
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path / "b.safetensors", model=model, optimizer=opt, scheduler=None, state={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_failed_write_leaves_the_existing_file_intact(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_weights(path, _mlp(0))
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # a crash midway through writing
        raise OSError("disk full")

    monkeypatch.setattr(distill.core.files, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, _mlp(1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    load_weights(path, _mlp(2))  # still loadable


def test_atomic_write_text_replaces_whole_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "notes.txt"
    distill.core.files.atomic_write_text(path, "old")
    monkeypatch.setattr(distill.core.files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("io")))
    with pytest.raises(OSError):
        distill.core.files.atomic_write_text(path, "new text")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int):
    previous = os.umask(umask)
    try:
        save_weights(tmp_path / "m.safetensors", _mlp(0))
        distill.core.files.atomic_write_text(tmp_path / "report.md", "# report")
    finally:
        os.umask(previous)
    for name in ("m.safetensors", "report.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
