"""This process's place in a run (rank, world size, device), under torchrun/accelerate or alone."""

from __future__ import annotations

import torch
from accelerate.state import PartialState


def use_cuda(device: str) -> bool:
    return torch.cuda.is_available() and device != "cpu"


def process_state(device: str = "auto") -> PartialState:
    """This process's place in the run (rank, world size); initialises torch.distributed under torchrun."""
    return PartialState(cpu=not use_cuda(device))


def fast_bfloat16(device: str) -> bool:
    """Whether bfloat16 matrix products run fast where `device` resolves: a CUDA GPU that supports
    them, or a CPU with AMX or AVX-512 BF16 units (there a bfloat16 forward of SmolLM2-135M took 0.43×
    a float32 one: benchmarks/bf16_teacher.py)."""
    if use_cuda(device):
        return torch.cuda.is_bf16_supported()
    try:  # private helpers of torch.cpu: absent from a build, they answer no
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False
