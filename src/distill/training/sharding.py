"""FSDP for the LM trainer: a student's weights, gradients and optimizer state split across processes.

    template = copy.deepcopy(student)                 # the whole model, to hand back at the end
    root = shard(step_module, device)                 # FSDP2: each decoder layer, then the module whose
                                                      # forward computes the loss (it holds the student)
    ...train; evaluate inside `with gathered_root(root):`...
    model_view, optim_view = Whole(student), WholeOptimizer(student, optimizer)   # every rank
    save_training_state(path, model=model_view, optimizer=optim_view, ...)       # main rank writes
    gather(student, template)                         # every rank: the trained model, whole

Checkpoints hold the whole model and optimizer state in the usual format (optimizer state keyed by
parameter position), so a run sharded over N processes resumes on M, or in one without FSDP.
Gathering and scattering are collective: every process calls them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply FSDP2 in place: every block of the model's layer list (a Hugging Face decoder's
    `layers`), then the root, over all processes; parameters become DTensor shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextmanager
def gathered_root(root: nn.Module | None) -> Iterator[None]:
    """Hold the root's own parameters (embedding, final norm, output layer) whole while the model is
    called other than through the root's forward (evaluation); layers still gather themselves."""
    if root is None:
        yield
        return
    root.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        root.reshard()  # type: ignore[operator]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The largest list of repeated layers (the unit FSDP gathers at a time)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=len)) if lists else []


def _options(everywhere: bool = False) -> Any:
    """Whole tensors on the CPU of the main process only (for checkpoints), or on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)


class Whole:
    """The whole model state of a sharded model (gathered on creation), for `save_training_state`;
    `load_state_dict` scatters a whole state back into the shards."""

    def __init__(self, model: nn.Module, gather: bool = True, everywhere: bool = False):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        self.model = model
        self._state = get_model_state_dict(model, options=_options(everywhere)) if gather else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The gathered state; without `gather`, the shards (their shapes are the whole ones)."""
        return self._state if self._state is not None else self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))


class WholeOptimizer:
    """The whole optimizer state of a sharded model, keyed by parameter position like
    `torch.optim.Optimizer.state_dict()`, so a checkpoint does not depend on the sharding."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, gather: bool = True):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        self.model, self.optimizer = model, optimizer
        self.fqns = _fqns_in_order(model, optimizer)
        self._state = get_optimizer_state_dict(model, optimizer, options=_options()) if gather else None

    def state_dict(self) -> dict[str, Any]:
        assert self._state is not None, "WholeOptimizer(gather=False) only loads"
        position = {fqn: i for i, fqn in enumerate(self.fqns)}
        return {"state": {position[k]: v for k, v in self._state["state"].items()},
                "param_groups": [{**g, "params": [position[p] for p in g["params"]]}
                                 for g in self._state["param_groups"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        named = {"state": {self.fqns[int(i)]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [self.fqns[int(p)] for p in g["params"]]}
                                  for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, named, options=StateDictOptions(full_state_dict=True))


def gather(model: nn.Module, template: nn.Module) -> nn.Module:
    """`template` (an unsharded copy of the model, taken before `shard`) holding the trained weights."""
    whole = Whole(model, everywhere=True).state_dict()
    template.load_state_dict({k: v.detach().cpu() for k, v in whole.items()})
    return template


def _fqns_in_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
