"""Checkpoints in safetensors, written atomically (temp file + rename), never unpickled.

A training checkpoint is one file: model tensors under ``model.``, optimizer tensors under
``optim.``, RNG states under ``rng.``, and everything else (epoch, history, optimizer and
scheduler scalars) as JSON in the safetensors metadata. Every file written here carries the SHA-256
of its tensors' bytes (`checksum` in the metadata); a file whose bytes no longer match is refused
(files from before checksums load unchecked).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from distill.core.errors import CheckpointError
from distill.core.files import atomic_save_tensors


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save a model's state dict (tied weights are stored once per name, cloned)."""
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    atomic_save_tensors(path, tensors, {"distill": json.dumps(meta or {}), "checksum": checksum(tensors)})


def load_weights(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into `model`, failing clearly when they belong to another architecture."""
    tensors, meta = _read(path)
    tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")} or tensors
    _check_compatible(path, model, tensors)
    model.load_state_dict(tensors)
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked (safetensors, checksum) but loaded into no model."""
    return _read(path)[0]


def save_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, state: dict[str, Any]) -> None:
    """Everything needed to continue training bit-for-bit: weights, optimizer, scheduler, RNG."""
    tensors = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"state": state, "param_groups": opt["param_groups"], "optim_scalars": scalars,
            "scheduler": scheduler.state_dict() if scheduler is not None else None}
    atomic_save_tensors(path, tensors, {"distill": json.dumps(meta), "checksum": checksum(tensors)})


def load_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> dict[str, Any]:
    """Restore what `save_training_state` wrote; returns its `state` dict."""
    tensors, meta = _read(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_compatible(path, model, weights)
    model.load_state_dict(weights)
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta["optim_scalars"].items():
        opt_state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    match_param_layout(optimizer)
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["state"]


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments, SGD's momentum) its parameter's memory
    layout. Checkpoints store them contiguous; a channels-last parameter with contiguous moments
    silently gets wrong updates from PyTorch's fused optimizers."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return  # e.g. sharding.WholeOptimizer: the sharded optimizer lays out its own state
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_metadata(path: Path) -> dict[str, Any]:
    _require_safetensors(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("distill", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable distill checkpoint ({exc}).") from None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not Path(path).is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    _require_safetensors(Path(path))
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get("checksum")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be "
                              "truncated or corrupt. Use an earlier checkpoint or retrain.") from None
    if expected is not None and checksum(tensors) != expected:
        raise CorruptCheckpoint(f"{path} is corrupt: its tensors no longer match the checksum written with them "
                                "(a disk or copy error changed its bytes). Use an earlier checkpoint or retrain.")
    return tensors, read_metadata(path)


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose bytes no longer match its checksum."""


def _require_safetensors(path: Path) -> None:
    """Refuse, without reading further, a file that does not start like safetensors: a PyTorch
    .pt/.bin is a pickle, and unpickling a file runs whatever code it names."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({exc.strerror or exc}).") from None
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 2 <= header_len <= _MAX_HEADER:
        return
    raise CheckpointError(
        f"{path} is not a safetensors file. distill loads weights only from safetensors and never unpickles "
        f"a file (a .pt/.pth/.bin can run code when loaded). To convert a PyTorch state dict you trust: "
        f"{convert_hint(path)}")


_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def convert_hint(path: Path) -> str:
    """The one-liner that turns a trusted PyTorch state dict at `path` into safetensors."""
    target = Path(path).with_suffix(".safetensors")
    if target == Path(path):
        target = Path(path).with_name(Path(path).stem + ".converted.safetensors")
    return (f"python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{path}', weights_only=True), '{target}')\"")


def _check_compatible(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {found[k]} vs model {expected[k]}"
             for k in expected if k in found and found[k] != expected[k]]
    if missing or extra or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {extra[:5]}" if extra else "",
            f"shape mismatch {wrong[:3]}" if wrong else "",
        ]))
        raise CheckpointError(
            f"Checkpoint {path} was written for a different architecture ({detail}). "
            f"Load it into the model it was trained with ({type(model).__name__} here), or fix "
            "the model's arch/kwargs in the config."
        )


TRAINING_STATE = ("last.safetensors", "best.safetensors")


def drop_training_state(stage_dir: Path, keep: bool = False) -> None:
    """Once a stage's final weights are written: remove what only resuming its training needed (weights,
    optimizer state and RNG in `last.safetensors`, the best epoch's copy in `best.safetensors`); the
    stage keeps its weights and metrics. A no-op with `keep` (`keep_state`, `--keep-state`)."""
    if not keep:
        for name in TRAINING_STATE:
            (Path(stage_dir) / name).unlink(missing_ok=True)
