"""Out-of-fold teacher targets: an answer to a teacher that is near one-hot on its own training examples.

A teacher fitted to ~100% of its training examples gives them near one-hot targets, with little dark
knowledge. With `teacher.out_of_fold: k`, the labelled training split is cut into k folds; k extra
teachers (the teacher's own architecture and training settings) each train on the other k − 1 folds
and score the fold they never saw. Every training example is thus taught with the targets a teacher
gives to a *new* input, as in stacking's out-of-fold predictions. Unlabelled rows (a transfer set)
were never seen by the main teacher, which scores them; the main teacher is also the one reported.

Each fold teacher is its own resumable stage under `<run>/teacher_folds/`; the targets are computed
from them in memory (k forwards over one fold each), so no extra cache format is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.core.checkpoint import drop_training_state, load_weights, save_weights
from distill.core.distributed import process_state
from distill.core.errors import DataError
from distill.data.arrays import ArrayDataset, DataSplits
from distill.eval.metrics import predict
from distill.losses.methods import CE
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.config import RunConfig
from distill.teachers.signals import CachedTeacher
from distill.training.classify import fit


def fold_indices(n: int, k: int, seed: int) -> list[torch.Tensor]:
    """k disjoint folds covering 0..n-1, from a seeded permutation (sizes differ by at most one)."""
    if n < k:
        raise DataError(f"teacher.out_of_fold={k} needs at least {k} labelled training examples (got {n}).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [fold.sort().values for fold in perm.chunk(k)]


def out_of_fold_signal(cfg: RunConfig, data: DataSplits, teacher: nn.Module, taught: Dataset, run_dir: Path,
                       resume: bool) -> CachedTeacher:
    """Targets over `taught` (labelled rows first, then unlabelled): each labelled row's from the fold teacher
    that did not train on it, each unlabelled row's from `teacher`."""
    train = data.train
    if not isinstance(train, ArrayDataset) or not isinstance(taught, ArrayDataset):
        raise DataError("teacher.out_of_fold needs an in-memory dataset (a built-in one, csv or arrays).")
    k = cfg.teacher.out_of_fold or 0
    device = next(teacher.parameters()).device
    table = predict(teacher, taught)
    for i, fold in enumerate(fold_indices(len(train), k, cfg.teacher.train.seed)):
        member = _fold_teacher(cfg, data, fold, run_dir / "teacher_folds" / f"fold-{i}", resume,
                               f"teacher fold {i + 1}/{k}").to(device)
        table[fold] = predict(member, ArrayDataset(train.inputs[fold], train.labels[fold]))
    return CachedTeacher.from_table(table, run_dir / "teacher_folds")


def _fold_teacher(cfg: RunConfig, data: DataSplits, fold: torch.Tensor, stage: Path, resume: bool,
                  name: str) -> nn.Module:
    """The teacher trained on every labelled training example outside `fold` (a resumable stage)."""
    model = build_model(cfg.teacher, data.input_shape, data.num_classes, seed=cfg.teacher.train.seed)
    done = stage / "model.safetensors"
    if done.is_file():
        load_weights(done, model)
        if process_state(cfg.device).is_main_process:
            drop_training_state(stage, keep=cfg.keep_state)
        return freeze(model)
    train: Any = data.train
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[fold] = False
    out = fit(model, ArrayDataset(train.inputs[keep], train.labels[keep]), objective=CE(),
              config=cfg.teacher.train, num_classes=data.num_classes, val_data=data.val, checkpoint_dir=stage,
              resume=resume, device=cfg.device, quiet=cfg.quiet, tracking=cfg.report_to, project=cfg.name, name=name)
    if process_state(cfg.device).is_main_process:
        save_weights(done, out.model, {"stage": stage.name})
        drop_training_state(stage, keep=cfg.keep_state)
    process_state(cfg.device).wait_for_everyone()
    return freeze(out.model)
