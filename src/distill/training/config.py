"""The training settings: optimizer, schedule, epochs or steps, precision, sharding (classifiers' `train`, LMs'
`train`, on-policy rounds)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.core.config import Strict
from distill.data.augment import AugmentConfig


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("adamw", description="The torch.optim optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (after warmup; cosine decays it to 0).")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled for adamw; L2 for sgd and adam.")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only (Nesterov off).")


DEFAULT_EPOCHS = 10  # a budget given neither in epochs nor in steps: this many epochs,
DEFAULT_MIN_STEPS = 1000  # and at least this many steps (10 epochs of a 1,000-example set are 80 steps)


class TrainConfig(Strict):
    epochs: int | None = Field(None, ge=1, description=(
        "Passes over the training data (or give `steps`). Neither: 10 epochs and at least 1,000 steps."))
    steps: int | None = Field(None, ge=1, description="Optimizer steps in all, instead of `epochs`.")
    eval_every: int | None = Field(None, ge=1, description=(
        "Steps between validation rows (each may become the kept best weights); default once per epoch."))
    save_every: int | None = Field(None, ge=1, description=(
        "Steps between resumable checkpoints; default at each validation row."))
    batch_size: int = Field(128, ge=1, description="Examples per optimizer step (per process under DDP).")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: Literal["none", "cosine"] = Field("cosine", description="Learning rate after warmup: constant, or "
                                                 "cosine decay to 0 at the last step.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warmup from 0, in epochs (fractions allowed).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradients' global norm to this (null: no clip).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Epochs without a better val accuracy.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description=(
        "Mixed precision through Accelerate; auto: bf16 on a CUDA GPU that has it, else none (no)."))
    seed: int = Field(0, description="Seeds the student's initialisation, batch order and augmentation.")
    normalize_terms: bool = Field(False, description="After the loss-scale guard's first steps, divide each loss "
                                  "term by its mean magnitude over them, so each term then weighs about its weight.")

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"give the budget as epochs ({self.epochs}) or as steps ({self.steps}), not both")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        """The budget in optimizer steps, for epochs of `steps_per_epoch` steps."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * steps_per_epoch
        return max(DEFAULT_EPOCHS * steps_per_epoch, DEFAULT_MIN_STEPS)

    def with_steps(self, steps: int) -> TrainConfig:
        """The same settings with a budget of `steps` optimizer steps."""
        return self.model_copy(update={"steps": steps, "epochs": None})


class OnPolicyConfig(Strict):
    """GKD-style rounds: a fraction of batches are continuations sampled from the student."""

    fraction: float = Field(0.0, ge=0, le=1, description="λ: share of batches sampled from the student.")
    start: float = Field(0.0, ge=0, lt=1, description=(
        "Share of train.steps before the first sampled batch: on-policy rounds late in training, once "
        "the student writes text worth scoring (0: from the first step)."))
    prompt_tokens: int = Field(32, ge=1, description="Tokens of each block kept as the prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Longest continuation the student writes.")
    temperature: float = Field(1.0, gt=0, description="The student's sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this mass.")
    prefetch: bool = Field(False, description=(
        "Prompt rows: write and score the next step's answers in the background while this step trains, "
        "from the weights before this step's update (one step behind strictly on-policy), so a teacher "
        "server's latency hides behind training."))


class LMTrainConfig(Strict):
    steps: int = Field(200, ge=1, description="Optimizer steps in all.")
    batch_size: int = Field(4, ge=1, description="Rows (blocks or prompts) per optimizer step, per process.")
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=5e-4, weight_decay=0.01))
    scheduler: Literal["none", "cosine"] = Field("cosine", description="Learning rate after warmup: constant, or "
                                                 "cosine decay to 0 at the last step.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup from 0 over this many steps.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradients' global norm to this (null: no clip).")
    eval_every: int = Field(50, ge=1, description="Steps between held-out evaluation rows in metrics.jsonl.")
    save_every: int = Field(50, ge=1, description="Steps between resumable checkpoints.")
    precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description=(
        "Mixed precision through Accelerate; auto: bf16 on a CUDA GPU that has it, else none (no)."))
    shard: Literal["none", "fsdp"] = Field(
        "none", description="fsdp: split the student's weights, gradients and optimizer state across the "
        "processes of a torchrun launch (FSDP2, one unit per decoder layer); with one process, no effect.")
    seed: int = Field(0, description="Seeds the student's initialisation, batch order and sampling.")
