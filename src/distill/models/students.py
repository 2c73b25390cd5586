"""Students built from their teacher: keep a subset of its layers (the DistilBERT initialisation).

    student = keep_layers(teacher, "backbone.encoder.layer", every_kth(6, 2))   # layers 0, 2, 4
    student = keep_layers(cnn, "features", [0, 1, 3])                          # any layered model

Works on any `nn.Module` whose layers sit in one `nn.ModuleList` or `nn.Sequential` at a module
path. The teacher is left untouched: the student is a deep copy holding copies of the chosen
layers' weights, so it starts where the teacher's features are already good.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from distill.core.errors import ModelError
from distill.models.taps import resolve_module


def every_kth(n: int, k: int) -> list[int]:
    """Indices 0, k, 2k, … below `n`: e.g. `every_kth(6, 2)` is `[0, 2, 4]` (half the layers)."""
    if n < 1 or k < 1:
        raise ModelError(f"every_kth: need n ≥ 1 layers and a step k ≥ 1 (got n={n}, k={k}).")
    return list(range(0, n, k))


def keep_layers(model: nn.Module, path: str, layers: Sequence[int]) -> nn.Module:
    """A deep copy of `model` whose layer list at `path` holds only `layers` (increasing indices).

    Also sets `num_hidden_layers` in every Hugging Face config the copy carries, and renumbers the
    kept layers' `layer_idx` (Hugging Face caches address layers by it).
    """
    container = resolve_module(model, path, "layers path")
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ModelError(f"`{path}` is a {type(container).__name__}; keep_layers needs the nn.ModuleList or "
                         "nn.Sequential that holds the layers (e.g. `backbone.encoder.layer`, `features`).")
    _check_indices(list(layers), len(container), path)
    student = copy.deepcopy(model)
    parent_path, _, name = path.rpartition(".")
    parent = resolve_module(student, parent_path, "layers path") if parent_path else student
    old = getattr(parent, name)
    kept = [old[i] for i in layers]
    setattr(parent, name, nn.Sequential(*kept) if isinstance(old, nn.Sequential) else nn.ModuleList(kept))
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    for config in _hf_configs(student):
        if getattr(config, "num_hidden_layers", None) == len(container):
            config.num_hidden_layers = len(kept)
    return student


def _check_indices(layers: list[int], n: int, path: str) -> None:
    if not layers:
        raise ModelError(f"keep_layers: no layers chosen from `{path}`; give indices in 0…{n - 1}.")
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ModelError(f"layers {bad} are out of range: `{path}` has {n} layers, valid indices 0…{n - 1}.")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ModelError(f"layers {layers} must be strictly increasing (each layer once, in the teacher's order).")


def _hf_configs(model: nn.Module) -> list[object]:
    """Distinct Hugging Face config objects held by `model` or its submodules (a model shares one)."""
    found = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
             and hasattr(c, "num_hidden_layers")}
    return list(found.values())
