"""Pruning: unstructured magnitude pruning, and structured pruning that really shrinks the model.

Structured pruning removes whole channels (Conv2d outputs) and neurons (Linear outputs) and cuts
every layer that reads them, so the result is a smaller dense model — faster, not just sparser.
Which channels can go is read from the model's data flow, traced with `torch.fx`: a producer's
output channels may be removed when every path from it reaches only consumers that index those
channels (the next Conv2d / Linear, possibly through BatchNorm, activations, pooling, dropout and
flatten). A channel that feeds a residual sum, a concatenation or the model output is kept.

Minitron (Muralidharan et al. 2024) prunes, then distils from the unpruned model to recover;
`distill.training.classify.fit` with the original as teacher does the second half.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import prune as torch_prune

from distill.core.errors import ModelError

_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                 nn.LeakyReLU, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.Identity)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_FLATTEN = {torch.flatten}


@dataclass
class Group:
    """Channels of one producer, the norms that carry them, and the layers that read them."""

    producer: str
    width: int
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module path, spatial size per channel)


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    widths: dict[str, tuple[int, int]]  # producer path -> (before, after)

    @property
    def reduction(self) -> float:
        return 1 - self.params_after / self.params_before


# --------------------------------------------------------------------------- unstructured


def magnitude_prune(model: nn.Module, amount: float) -> tuple[nn.Module, float]:
    """A copy with the `amount` fraction of Conv/Linear weights of smallest |w| set to zero (global).

    Zeros save nothing on dense kernels; this is the reference point for structured pruning.
    Returns the copy and its measured sparsity over those weights.
    """
    _check_amount(amount)
    pruned = copy.deepcopy(model)
    params = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for m, name in params:
        torch_prune.remove(m, name)
    total = sum(m.weight.numel() for m, _ in params)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return pruned, zeros / total


# --------------------------------------------------------------------------- structured


def prunable_groups(model: nn.Module, example: torch.Tensor) -> list[Group]:
    """The channel groups that can be removed, from one traced forward on `example`."""
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; say what it means
        raise ModelError(f"Structured pruning traces the model with torch.fx, which failed for "
                         f"{type(model).__name__}: {exc}. Models with data-dependent control flow cannot be "
                         "traced; prune layers with distill.models.students.keep_layers, or prune unstructured.") from None
    ShapeProp(graph).propagate(example)
    modules = dict(graph.named_modules())
    groups = []
    for node in graph.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if _is_producer(module):
            group = _follow(node, modules, Group(node.target, _width(module)))
            if group is not None and group.consumers:
                groups.append(group)
    return groups


def prune_channels(model: nn.Module, amount: float, example: torch.Tensor,
                   exclude: tuple[str, ...] = ()) -> tuple[nn.Module, PruneReport]:
    """A smaller copy: in every prunable group, the `amount` fraction of channels with the smallest
    L1 filter norm is removed (at least one channel stays). `exclude` lists producers to keep whole."""
    _check_amount(amount)
    pruned = copy.deepcopy(model).eval()
    groups = [g for g in prunable_groups(pruned, example) if g.producer not in exclude]
    if not groups:
        raise ModelError(f"{type(model).__name__} has no channels that can be removed: every Conv2d/Linear "
                         "output feeds a residual sum, a concatenation or the output. Prune layers instead "
                         "(distill.models.students.keep_layers).")
    widths = {}
    for g in groups:
        keep = _strongest(pruned.get_submodule(g.producer), max(1, round(g.width * (1 - amount))))
        _apply(pruned, g, keep)
        widths[g.producer] = (g.width, len(keep))
    report = PruneReport(_count(model), _count(pruned), widths)
    return pruned.train(model.training), report


def prune_to_size(model: nn.Module, reduction: float, example: torch.Tensor,
                  exclude: tuple[str, ...] = ()) -> tuple[nn.Module, PruneReport]:
    """Structured pruning to a target parameter reduction (e.g. 0.8 = 80% fewer parameters), found by
    bisection on the channel fraction; the closest reachable reduction at or above the target."""
    _check_amount(reduction)
    low, high, best = 0.0, 0.99, None
    for _ in range(12):
        mid = (low + high) / 2
        pruned, report = prune_channels(model, mid, example, exclude)
        if report.reduction >= reduction:
            high, best = mid, (pruned, report)
        else:
            low = mid
    if best is None:
        reached = prune_channels(model, 0.99, example, exclude)[1].reduction
        raise ModelError(f"{type(model).__name__} cannot lose {reduction:.0%} of its parameters by removing "
                         f"channels (at most {reached:.0%}: the rest sits in layers that must keep their width).")
    return best


def shrink_to(model: nn.Module, widths: dict[str, int], example: torch.Tensor) -> nn.Module:
    """`model` (freshly built) cut to the channel widths a pruned checkpoint was saved with, so that
    checkpoint loads into it: `load_weights(path, shrink_to(build(...), read_metadata(path)["widths"], x))`."""
    shrunk = copy.deepcopy(model)
    for g in prunable_groups(shrunk, example):
        if g.producer in widths:
            _apply(shrunk, g, torch.arange(widths[g.producer]))
    return shrunk


def _follow(start: fx.Node, modules: dict[str, nn.Module], group: Group) -> Group | None:
    """Walk every path from `start`; None when one reaches something that mixes or keeps channels."""
    stack, seen = [(user, 1) for user in start.users], set()
    while stack:
        node, spatial = stack.pop()
        if (node, spatial) in seen:
            continue
        seen.add((node, spatial))
        module = modules.get(node.target) if node.op == "call_module" else None
        if _is_producer(module) and _reads_channels(module, group.width * spatial):
            group.consumers.append((node.target, spatial))
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            group.norms.append(node.target)
        if isinstance(module, nn.Flatten) or node.op == "call_function" and node.target in _FLATTEN or \
                node.op == "call_method" and node.target == "flatten":
            shape = node.args[0].meta.get("tensor_meta").shape  # (B, C, H, W) before flattening
            spatial = int(torch.Size(shape[2:]).numel()) if len(shape) > 2 else 1
        elif not (isinstance(module, _PASS_MODULES) or node.op == "call_function" and node.target in _PASS_FUNCTIONS
                  or node.op == "call_method" and node.target in _PASS_METHODS):
            return None  # a sum, a concatenation, the output, or an op we cannot see through
        stack.extend((user, spatial) for user in node.users)
    return group


def _is_producer(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and module.groups == 1


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _reads_channels(module: nn.Module, n: int) -> bool:
    return (module.in_channels if isinstance(module, nn.Conv2d) else module.in_features) == n


def _strongest(producer: nn.Module, k: int) -> torch.Tensor:
    norms = producer.weight.detach().abs().flatten(1).sum(1)
    return norms.topk(k).indices.sort().values


def _apply(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    producer = model.get_submodule(group.producer)
    producer.weight = nn.Parameter(producer.weight.detach()[keep].clone())
    if producer.bias is not None:
        producer.bias = nn.Parameter(producer.bias.detach()[keep].clone())
    setattr(producer, "out_channels" if isinstance(producer, nn.Conv2d) else "out_features", len(keep))
    for path in group.norms:
        norm = model.get_submodule(path)
        for name in ("weight", "bias"):
            if getattr(norm, name, None) is not None:
                setattr(norm, name, nn.Parameter(getattr(norm, name).detach()[keep].clone()))
        for name in ("running_mean", "running_var"):
            if getattr(norm, name, None) is not None:
                setattr(norm, name, getattr(norm, name)[keep].clone())
        norm.num_features = len(keep)
    for path, spatial in group.consumers:
        consumer = model.get_submodule(path)
        cols = (keep[:, None] * spatial + torch.arange(spatial)).flatten()  # channel-major flatten order
        consumer.weight = nn.Parameter(consumer.weight.detach()[:, cols].clone())
        setattr(consumer, "in_channels" if isinstance(consumer, nn.Conv2d) else "in_features", len(cols))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_amount(amount: float) -> None:
    if not 0 < amount < 1:
        raise ModelError(f"pruning amount must be a fraction in (0, 1), got {amount}.")

