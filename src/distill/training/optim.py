"""What every training run is set up with: the Accelerator (process placement, mixed precision,
tracking), the optimizer (fused where PyTorch can) and the per-step learning-rate schedule."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from distill.core.distributed import use_cuda
from distill.core.errors import ConfigError

SHARDED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed ZeRO",
                   "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def make_accelerator(device: str, precision: str, tracking: list[Any] | None,
                     project_dir: Path | None) -> Accelerator:
    refuse_sharded_engines()
    cuda = use_cuda(device)
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    # Accelerate keeps one process-wide state; a new fit may ask for another precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision=precision, log_with=tracking or None,
                       project_dir=str(project_dir) if project_dir else None)


def refuse_sharded_engines() -> None:
    """Stop before training when `accelerate launch` selected an engine that shards the weights:
    distill's checkpoints and reports read the whole model on the main process, which under FSDP
    or ZeRO holds a shard, so the run would save a fraction of the model (or hang)."""
    chosen = [name for var, name in SHARDED_ENGINES.items() if os.environ.get(var, "false").lower() == "true"]
    if chosen:
        raise ConfigError(
            f"accelerate launch selected {chosen[0]}, which distill does not run through Accelerate: its "
            "checkpoints would hold one process's shard of the model. Use data parallelism (DDP): `accelerate "
            "config` with distributed_type MULTI_GPU / MULTI_CPU, or torchrun. To shard an LM student, launch "
            "with torchrun and set train.shard=fsdp (distill's own FSDP2). For a teacher too large for one "
            "device, build its top-k cache once where it fits (`distill lm-cache`) and train from the cache "
            "(teacher.signal: cached): training then never loads the teacher.")


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The configured optimizer (`cfg.optimizer`) over the trainable parameters, fused where PyTorch can."""
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if fused_ok(params) else {}
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True,
                               **fused)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, **fused)


def fused_ok(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused optimizer kernels apply: floating-point parameters on the CPU or CUDA.
    One kernel updates every tensor, instead of a dozen element-wise passes per tensor (3x faster
    AdamW steps on the CPU; see BENCHMARKS.md, speed pass)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int) -> Any:
    """An epoch-based config's schedule, per step (`warmup_schedule`)."""
    return warmup_schedule(optimizer, total=max(1, cfg.epochs * steps_per_epoch),
                           warmup=int(cfg.warmup_epochs * steps_per_epoch), kind=cfg.scheduler)


def warmup_schedule(optimizer: torch.optim.Optimizer, *, total: int, warmup: int, kind: str) -> Any:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total` (or constant for 'none')."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def align_schedule(scheduler: Any, step: int) -> None:
    """After a resume, put the learning-rate schedule at `step`: an epoch-based run resumed on another
    number of processes has another number of steps per epoch than the checkpoint counted."""
    if 0 < step != scheduler.last_epoch:
        scheduler.last_epoch = step - 1
        scheduler.step()
