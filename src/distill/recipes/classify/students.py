"""The students of a `distill run` job: built from the config (a model of their own, or the teacher with
fewer layers), started from `student.checkpoint` when given, and trained with a stage's settings (the
plain student with as many steps as the distilled one)."""

from __future__ import annotations

import math

from torch import nn

from distill.core.checkpoint import load_weights
from distill.data.arrays import DataSplits
from distill.models.students import every_kth, keep_layers
from distill.models.taps import resolve_module
from distill.models.zoo import build_model
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.plan import Candidate
from distill.training.config import TrainConfig


def fresh_student(cfg: RunConfig, data: DataSplits, teacher: nn.Module) -> nn.Module:
    """The student every stage and pilot candidate starts from (`student.checkpoint` loaded, if given)."""
    student = build_student(cfg, data, teacher)
    if cfg.student.checkpoint is not None:
        load_weights(cfg.student.checkpoint, student)
    return student


def stage_config(cfg: RunConfig, data: DataSplits, how: Candidate) -> TrainConfig:
    """A student's training settings: `train` with the candidate's augmentation; a plain student gets
    as many steps as the distilled one (`baseline_budget`)."""
    train = cfg.train.model_copy(update={"augment": how.augment})
    return train if how.taught else baseline_budget(train, data)


def examples(data: DataSplits, *, taught: bool) -> int:
    """How many examples a student trains on: the labelled ones, and for a taught one the unlabelled too
    (counted, not concatenated)."""
    extra = len(data.unlabeled) if taught and data.unlabeled is not None else 0  # type: ignore[arg-type]
    return len(data.train) + extra  # type: ignore[arg-type]


def baseline_budget(train: TrainConfig, data: DataSplits) -> TrainConfig:
    """The plain student's training settings: as many optimizer steps as the distilled student takes.
    With a transfer set, an epoch over the labelled examples alone is shorter, so the baseline gets
    proportionally more epochs (its best validation row is kept, so a longer run cannot hurt it). A
    budget in steps is the same for both."""
    if train.steps is not None:
        return train
    n_labelled, n_all = examples(data, taught=False), examples(data, taught=True)
    per_all, per_epoch = math.ceil(n_all / train.batch_size), math.ceil(n_labelled / train.batch_size)
    steps = train.total_steps(per_all)
    epochs = math.ceil(steps / per_epoch)
    if epochs == train.epochs:
        return train
    return train.model_copy(update={"epochs": epochs, "warmup_epochs": train.warmup_epochs * per_all / per_epoch})


def build_student(cfg: RunConfig, data: DataSplits, teacher: nn.Module) -> nn.Module:
    """The student of the config: a model of its own, or the teacher with fewer layers (trainable)."""
    spec = cfg.student.from_teacher
    if spec is None:
        return build_model(cfg.student, data.input_shape, data.num_classes, seed=cfg.train.seed)
    container = resolve_module(teacher, spec.path, "student.from_teacher.path")
    layers = spec.layers if spec.layers is not None else every_kth(len(container), spec.every or 1)
    student = keep_layers(teacher, spec.path, layers)
    for p in student.parameters():
        p.requires_grad_(True)
    return student.train()
