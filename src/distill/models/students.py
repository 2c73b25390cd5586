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


def keep_layers(model: nn.Module, path: str, layers: Sequence[int], key: str = "layers") -> nn.Module:
    """A deep copy of `model` whose layer list at `path` holds only `layers` (increasing indices): the
    one layer-selection routine of every student built from its teacher (zoo models, encoders, causal
    LMs). The copy trains (its parameters require grad even if the teacher's were frozen).

    Also sets `num_hidden_layers` (and per-layer `layer_types`) in every Hugging Face config the copy
    carries, and renumbers the kept layers' `layer_idx` (Hugging Face caches address layers by it).
    `key` names the setting in errors.
    """
    container = resolve_module(model, path, "layers path")
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ModelError(f"`{path}` is a {type(container).__name__}; keep_layers needs the nn.ModuleList or "
                         "nn.Sequential that holds the layers (e.g. `backbone.encoder.layer`, `features`).")
    _check_indices(list(layers), len(container), path, key)
    parent_path, _, name = path.rpartition(".")
    parent = resolve_module(model, parent_path, "layers path") if parent_path else model
    chosen = [container[i] for i in layers]
    setattr(parent, name, nn.Sequential(*chosen) if isinstance(container, nn.Sequential) else nn.ModuleList(chosen))
    try:  # only the kept layers are copied: peak memory is the student's, not a second teacher
        student = copy.deepcopy(model)
    finally:
        setattr(parent, name, container)
    kept = resolve_module(student, path, "layers path")
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    for config in _hf_configs(student):
        if getattr(config, "num_hidden_layers", None) == len(container):
            config.num_hidden_layers = len(kept)
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == len(container):
                config.layer_types = [types[i] for i in layers]
    return student.requires_grad_(True).train()


def layer_list_path(model: nn.Module) -> str:
    """Module path of a Hugging Face model's list of layers (`encoder.layer` in BERT, `model.layers` in
    Llama): the first ModuleList with as many entries as its config has layers."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name
    raise ModelError(f"{type(model).__name__}: no nn.ModuleList of {n} layers found; keep_layers needs one.")


def _check_indices(layers: list[int], n: int, path: str, key: str) -> None:
    if not layers:
        raise ModelError(f"`{key}`: no layers chosen from `{path}`; give indices in 0…{n - 1}.")
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ModelError(f"`{key}`: {bad} are out of range: `{path}` has {n} layers, valid indices 0…{n - 1}.")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ModelError(f"`{key}`: {layers} must be strictly increasing (each layer once, in the teacher's "
                         "order).")


def _hf_configs(model: nn.Module) -> list[object]:
    """Distinct Hugging Face config objects held by `model` or its submodules (a model shares one)."""
    found = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
             and hasattr(c, "num_hidden_layers")}
    return list(found.values())
