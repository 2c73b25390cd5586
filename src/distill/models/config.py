"""Which model to build: a zoo name or `module:Class` with its kwargs and weights, or a student built from
its teacher's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from distill.core.config import Strict


class ModelConfig(Strict):
    arch: str = Field(..., description="Zoo name (mlp, cnn, resnet) or `module:Class` import path.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model's "
                                   "constructor, e.g. {hidden: [256]} for mlp.")
    checkpoint: Path | None = Field(None, description="Weights (.safetensors) to load.")


class FromTeacher(Strict):
    """Build the student as a copy of the trained teacher keeping some of its layers (DistilBERT's
    initialisation): the layers are the children of the nn.ModuleList / nn.Sequential at `path`."""

    path: str = Field(..., description="Module path of the layer list, e.g. `features`, `backbone.encoder.layer`.")
    layers: list[int] | None = Field(None, description="Indices to keep, increasing.")
    every: int | None = Field(None, ge=1, description="Keep every k-th layer: 0, k, 2k, …")

    @model_validator(mode="after")
    def _one_choice(self) -> FromTeacher:
        if (self.layers is None) == (self.every is None):
            raise ValueError("give exactly one of `layers` (indices) or `every` (a step)")
        return self
