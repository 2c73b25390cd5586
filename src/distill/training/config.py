"""The training settings: optimizer, schedule, epochs or steps, precision, sharding (classifiers' `train`, LMs'
`train`, on-policy rounds)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.core.config import Strict
from distill.data.augment import AugmentConfig


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: Literal["none", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="Epochs without a better val accuracy.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    normalize_terms: bool = Field(False, description="After the loss-scale guard's first steps, divide each loss "
                                  "term by its mean magnitude over them, so each term then weighs about its weight.")


class OnPolicyConfig(Strict):
    """GKD-style rounds: a fraction of batches are continuations sampled from the student."""

    fraction: float = Field(0.0, ge=0, le=1, description="λ: share of batches sampled from the student.")
    start: float = Field(0.0, ge=0, lt=1, description=(
        "Share of train.steps before the first sampled batch: on-policy rounds late in training, once "
        "the student writes text worth scoring (0: from the first step)."))
    prompt_tokens: int = Field(32, ge=1, description="Tokens of each block kept as the prompt.")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)


class LMTrainConfig(Strict):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=5e-4, weight_decay=0.01))
    scheduler: Literal["none", "cosine"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1)
    save_every: int = Field(50, ge=1)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    shard: Literal["none", "fsdp"] = Field(
        "none", description="fsdp: split the student's weights, gradients and optimizer state across the "
        "processes of a torchrun launch (FSDP2, one unit per decoder layer); with one process, no effect.")
    seed: int = 0
