"""The `distill prune` job: prune the config's trained teacher, recover by distillation, measure, save.

    distill prune CONFIG.yaml teacher.checkpoint=T.safetensors --reduction 0.8 --recover kd --out DIR

The saved weights carry the pruned widths in their metadata, so they reload into the config's
architecture with `distill.compress.prune.shrink_to`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distill.compress.prune import prune_to_size
from distill.core.checkpoint import load_weights, save_weights
from distill.core.errors import ConfigError
from distill.core.files import atomic_write_text, make_private_dir
from distill.data.arrays import DataSplits, labels_of
from distill.data.batches import iter_batches
from distill.data.datasets import load_data
from distill.eval.metrics import classification_metrics, predict
from distill.losses.methods import CE
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.plan import kd_objective
from distill.teachers.signals import LiveTeacher
from distill.training.tracking import check_report_to
from distill.training.classify import fit


def prune_and_recover(cfg: RunConfig, reduction: float, recover: Literal["kd", "ce", "none"],
                      out: Path) -> dict[str, Any]:
    """Prune to `reduction` fewer parameters, recover for `cfg.train` epochs, write `out/model.safetensors`
    and `out/prune.json` (accuracy of the original, the pruned and the recovered model)."""
    if cfg.teacher.checkpoint is None or cfg.teacher.arch is None:
        raise ConfigError("`teacher.checkpoint`: distill prune starts from a trained model; give its arch and "
                          "weights (e.g. teacher.checkpoint=runs/default/teacher/model.safetensors).")
    check_report_to(cfg.report_to)
    data = load_data(cfg.data)
    original = build_model(cfg.teacher, data.input_shape, data.num_classes)
    load_weights(cfg.teacher.checkpoint, original)
    original = freeze(original)
    example = next(iter_batches(data.train, torch.arange(2), 2))["inputs"]
    pruned, report = prune_to_size(original, reduction, example)
    summary: dict[str, Any] = {"reduction": report.reduction, "params_before": report.params_before,
                               "params_after": report.params_after,
                               "widths": {k: list(v) for k, v in report.widths.items()},
                               "accuracy": {"original": _accuracy(original, data), "pruned": _accuracy(pruned, data)}}
    if recover != "none":
        recovered = _recover(cfg, data, pruned, original, recover)
        summary["accuracy"]["recovered"] = _accuracy(recovered, data)
        pruned = recovered
    make_private_dir(out)
    widths = {k: v[1] for k, v in report.widths.items()}
    save_weights(out / "model.safetensors", pruned, {"widths": widths, "pruned_from": str(cfg.teacher.checkpoint)})
    atomic_write_text(out / "prune.json", json.dumps(summary, indent=2))
    return summary


def _recover(cfg: RunConfig, data: DataSplits, pruned: nn.Module, original: nn.Module, how: str) -> nn.Module:
    model = copy.deepcopy(pruned).train()
    for p in model.parameters():
        p.requires_grad_(True)
    objective = kd_objective(cfg.kd) if how == "kd" else CE()
    return fit(model, data.train, objective=objective, config=cfg.train, num_classes=data.num_classes,
               teacher=LiveTeacher(original) if how == "kd" else None, val_data=data.val, device=cfg.device,
               quiet=cfg.quiet, name=f"recover-{how}", tracking=cfg.report_to, project=cfg.name).model


def _accuracy(model: nn.Module, data: DataSplits) -> float:
    return classification_metrics(predict(model, data.test), labels_of(data.test))["accuracy"]
