"""This process's place in a run (rank, world size, device), under torchrun/accelerate or alone."""

from __future__ import annotations

import torch
from accelerate.state import PartialState


def use_cuda(device: str) -> bool:
    return torch.cuda.is_available() and device != "cpu"


def process_state(device: str = "auto") -> PartialState:
    """This process's place in the run (rank, world size); initialises torch.distributed under torchrun."""
    return PartialState(cpu=not use_cuda(device))
