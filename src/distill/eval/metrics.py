"""Evaluation: predictions and the metrics that compare a student with its teacher.

Computes only; reports render what this module returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from distill.data.arrays import labels_of
from distill.data.batches import iter_batches
from distill.losses.divergences import token_divergence
from distill.models.zoo import device_of, logits_of


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 512,
            indices: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, C) on CPU for every example of `dataset` (or those at `indices`), in order, with the
    model in eval mode."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    rows = torch.arange(len(dataset)) if indices is None else indices  # type: ignore[arg-type]
    out = [logits_of(model(b["inputs"].to(device))).float().cpu() for b in iter_batches(dataset, rows, batch_size)]
    model.train(was_training)
    return torch.cat(out)


def mean_confidence(model: nn.Module, dataset: Dataset, limit: int | None = None) -> float:
    """The model's mean top-1 probability on the first `limit` examples of `dataset` (all if None)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    return float(predict(model, dataset, indices=torch.arange(n)).softmax(-1).max(-1).values.mean())


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           teacher_logits: torch.Tensor | None = None, n_bins: int = 15) -> dict:
    """Top-1 accuracy (overall and per class), NLL, ECE and, given a teacher, agreement and KL."""
    probs = logits.softmax(-1)
    pred = probs.argmax(-1)
    correct = (pred == labels).float()
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
                 for c in range(logits.shape[-1])]
    out = {
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(probs, labels, n_bins),
    }
    if teacher_logits is not None:
        out["agreement"] = agreement(teacher_logits, logits)
        out["kl_teacher"] = kl_divergence(teacher_logits, logits)
    return out


def agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Share of examples where teacher and student predict the same class (top-1)."""
    return float((teacher_logits.argmax(-1) == student_logits.argmax(-1)).float().mean())


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean KL(teacher ‖ student) over examples, in nats, at temperature 1."""
    return float(token_divergence(student_logits, teacher_logits=teacher_logits, kind="forward_kl"))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): |accuracy − confidence| per equal-width confidence bin, weighted by bin size."""
    confidence, accuracy, count = calibration_bins(probs, labels, n_bins)
    weight = count / count.sum().clamp_min(1)
    return float((weight * (accuracy - confidence).abs()).sum())


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean confidence, accuracy and count (each (n_bins,)) of the top-1 predictions per bin.

    Bin b holds confidences in [b/n_bins, (b+1)/n_bins), the last one including 1; an empty bin
    has confidence and accuracy 0. These are the points of a reliability diagram.
    """
    conf, pred = probs.max(-1)
    correct = (pred == labels).to(conf.dtype)
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins)
    per_bin = count.clamp_min(1).to(conf.dtype)
    confidence = conf.new_zeros(n_bins).index_add_(0, bins, conf) / per_bin
    accuracy = conf.new_zeros(n_bins).index_add_(0, bins, correct) / per_bin
    return confidence, accuracy, count


def evaluate_model(model: nn.Module, dataset: Dataset, teacher_logits: torch.Tensor | None = None,
                   batch_size: int = 512) -> tuple[dict, torch.Tensor]:
    """Metrics of `model` on `dataset`, and its logits (to compare other models against)."""
    logits = predict(model, dataset, batch_size)
    return classification_metrics(logits, labels_of(dataset), teacher_logits), logits
