"""Taps: read any layer's output by module path, with forward hooks, without rewriting the model.

    taps = Taps(model, ["layer2.1", "encoder.layer.3.output"])   # wrong paths fail here
    with taps:                                                   # hooks live inside the block
        out = model(x)
    taps.outputs["layer2.1"]                                     # (B, C, H, W)

Works on any `nn.Module`, whatever its forward returns (a tensor, a tuple, a dict, a Hugging Face
output object): a tapped module's output is reduced to its first tensor. When teacher and student
tap layers of different widths, `make_adapter` builds the learned map between them (a linear layer
for (…, C) features, a 1×1 convolution for (B, C, H, W) maps); adapters are trained with the student
and kept apart from it, so they never reach the exported student.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from distill.core.errors import ConfigError, ModelError


def resolve_module(model: nn.Module, path: str, key: str = "taps") -> nn.Module:
    """The submodule at `path` (e.g. `encoder.layer.3.output`); an error lists the nearest paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)  # lower: unrelated names come up
    hint = f" Nearest: {', '.join(close)}." if close else f" Some valid paths: {', '.join(names[:8])}."
    raise ConfigError(f"`{key}`: {type(model).__name__} has no module `{path}`.{hint} Layers are named by "
                      "module path, not by a key of the model's output: to use an output, name the module "
                      "that computes it. List them all with `[n for n, _ in model.named_modules()]`.")


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module output (tensor, tuple/list, dict or a model-output object)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) or hasattr(value, "values") and callable(value.values):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            found = first_tensor(v)
            if found is not None:
                return found
    return None


class Taps:
    """Forward hooks that keep the outputs of the modules at `paths` (inside a `with` block)."""

    def __init__(self, model: nn.Module, paths: Iterable[str], key: str = "taps"):
        self.model = model
        self.paths = list(paths)
        self.modules = {p: resolve_module(model, p, key) for p in self.paths}  # fail before any compute
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Taps:
        self.outputs = {}
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._keep(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _keep(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None:
                raise ModelError(f"Tap `{path}` ({type(module).__name__}) returned no tensor; tap a module "
                                 "whose output is a tensor (or holds one).")
            self.outputs[path] = tensor
        return hook


def make_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], where: str) -> nn.Module:
    """A learned map from student features to the teacher's shape, or identity when they match.

    (B, C, H, W) → (B, C', H, W): a 1×1 convolution. (B, …, C) → (B, …, C'): a linear layer.
    Anything else (different spatial size or sequence length) cannot be matched by a learned
    per-position map: the error gives both shapes and what would be needed.
    """
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) != len(teacher_shape):
        raise ModelError(f"{where}: student output {student_shape} and teacher output {teacher_shape} have "
                         "different ranks; tap layers of the same kind (both feature maps, or both sequences).")
    if len(student_shape) == 4 and student_shape[2:] == teacher_shape[2:]:
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False)
    if student_shape[:-1] == teacher_shape[:-1]:
        return nn.Linear(student_shape[-1], teacher_shape[-1], bias=False)
    if len(student_shape) == 4:
        need = (f"the spatial sizes differ ({student_shape[2:]} vs {teacher_shape[2:]}): tap layers at the "
                "same resolution, or pool one side (e.g. nn.AdaptiveAvgPool2d) before the loss")
    else:
        need = (f"the leading dims differ ({student_shape[:-1]} vs {teacher_shape[:-1]}): tap layers with the "
                "same sequence length")
    raise ModelError(f"{where}: student output {student_shape} cannot be mapped to teacher output "
                     f"{teacher_shape}; {need}.")
