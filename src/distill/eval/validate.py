"""Validation beyond accuracy: where a student differs from its teacher, and how well each is calibrated.

Pure computations on held-out logits and labels (no models, no plots): per-class and per-slice
accuracy of teacher and student with the change between them, the student's confusion matrix,
reliability-diagram bins with ECE, and the examples where teacher and student disagree most.
`distill.eval.report` renders what `validate` returns (as `Validation.to_dict()` in report.json).

    v = validate(teacher_logits, student_logits, labels)   # (N, C), (N, C), (N,)
    v.per_class[0]          # the class where the student lost most against the teacher
    v.to_dict()             # JSON-ready
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from distill.eval.metrics import agreement, calibration_bins, expected_calibration_error
from distill.losses.divergences import per_token_divergence

Ranking = Literal["symmetric_kl", "probability_gap"]


@dataclass
class GroupAccuracy:
    """Teacher and student accuracy on the examples of one class (by true label) or one slice."""

    group: int | str
    n: int
    teacher_accuracy: float
    student_accuracy: float
    delta: float  # student − teacher: negative where the student regressed


@dataclass
class ReliabilityBin:
    """One equal-width confidence bin of a reliability diagram (top-1 predictions)."""

    lower: float
    upper: float
    confidence: float  # mean confidence of the predictions in the bin (0 when empty)
    accuracy: float  # share of them that are correct (0 when empty)
    count: int


@dataclass
class Calibration:
    ece: float
    bins: list[ReliabilityBin]


@dataclass
class Disagreement:
    """A held-out example on which teacher and student predict different classes."""

    index: int  # position in the evaluated split
    label: int
    teacher_prediction: int
    teacher_confidence: float  # teacher's probability of its own prediction
    student_prediction: int
    student_confidence: float  # student's probability of its own prediction
    student_prob_of_teacher: float  # student's probability of the teacher's prediction
    symmetric_kl: float  # KL(t‖s) + KL(s‖t), nats


@dataclass
class Validation:
    n: int
    agreement: float
    per_class: list[GroupAccuracy]  # classes with examples, most negative delta first
    per_slice: list[GroupAccuracy] | None  # as per_class, when slices were given
    confusion: list[list[int]]  # (C, C) counts: row = true label, column = student prediction
    calibration: dict[str, Calibration]  # "teacher", "student"
    n_disagreements: int
    disagreements: list[Disagreement]  # the top ones, largest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
             slices: Sequence[int | str] | torch.Tensor | None = None, *, top_n: int = 10,
             rank_by: Ranking = "symmetric_kl", n_bins: int = 15,
             indices: torch.Tensor | None = None) -> Validation:
    """Compare a student with its teacher on one held-out split.

    Args:
        teacher_logits, student_logits: (N, C) logits of the same examples, in the same order.
        labels: (N,) true class ids in [0, C).
        slices: optional (N,) slice id per example (e.g. a source or a subgroup), int or str.
        top_n: how many disagreements to keep.
        rank_by: "symmetric_kl" (KL both ways between the two distributions) or "probability_gap"
            (teacher's probability of its prediction minus the student's probability of it).
        n_bins: equal-width confidence bins of the reliability diagrams and ECE.
        indices: (N,) example index to report per row (default 0..N-1).
    """
    t_logits, s_logits = teacher_logits.detach().float().cpu(), student_logits.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if t_logits.shape != s_logits.shape or t_logits.ndim != 2 or len(labels) != len(t_logits):
        raise ValueError(f"expected teacher and student logits (N, C) and labels (N,); got "
                         f"{tuple(t_logits.shape)}, {tuple(s_logits.shape)} and {tuple(labels.shape)}")
    t_correct = t_logits.argmax(-1) == labels
    s_correct = s_logits.argmax(-1) == labels
    per_slice = None
    if slices is not None:
        ids = slices.tolist() if isinstance(slices, torch.Tensor) else list(slices)
        if len(ids) != len(labels):
            raise ValueError(f"slices has {len(ids)} entries but there are {len(labels)} examples")
        per_slice = group_accuracies(ids, t_correct, s_correct)
    disagreeing, top = top_disagreements(t_logits, s_logits, labels, top_n, rank_by, indices)
    return Validation(
        n=len(labels),
        agreement=agreement(t_logits, s_logits),
        per_class=group_accuracies(labels.tolist(), t_correct, s_correct),
        per_slice=per_slice,
        confusion=confusion_matrix(labels, s_logits.argmax(-1), t_logits.shape[-1]),
        calibration={"teacher": calibration(t_logits.softmax(-1), labels, n_bins),
                     "student": calibration(s_logits.softmax(-1), labels, n_bins)},
        n_disagreements=disagreeing,
        disagreements=top,
    )


def group_accuracies(groups: list[Any], teacher_correct: torch.Tensor,
                     student_correct: torch.Tensor) -> list[GroupAccuracy]:
    """Accuracy of both models per group, sorted by student − teacher (worst first, then by group)."""
    rows: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(g, []).append(i)
    out = []
    for g, idx in rows.items():
        t = float(teacher_correct[idx].double().mean())
        s = float(student_correct[idx].double().mean())
        out.append(GroupAccuracy(group=g, n=len(idx), teacher_accuracy=t, student_accuracy=s, delta=s - t))
    return sorted(out, key=lambda r: (r.delta, _tie_order(r.group)))


def _tie_order(group: int | str) -> tuple[int, Any, str]:
    """Equal deltas keep numbered groups before named ones, each in their natural order."""
    return (1, 0, group) if isinstance(group, str) else (0, group, "")


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> list[list[int]]:
    """(C, C) counts: row = true label, column = predicted class."""
    flat = torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).tolist()


def calibration(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> Calibration:
    """ECE and the reliability-diagram bins it is computed from (`distill.eval.metrics`)."""
    confidence, accuracy, count = calibration_bins(probs, labels, n_bins)
    bins = [ReliabilityBin(lower=b / n_bins, upper=(b + 1) / n_bins, confidence=float(confidence[b]),
                           accuracy=float(accuracy[b]), count=int(count[b])) for b in range(n_bins)]
    return Calibration(ece=expected_calibration_error(probs, labels, n_bins), bins=bins)


def top_disagreements(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                      top_n: int = 10, rank_by: Ranking = "symmetric_kl",
                      indices: torch.Tensor | None = None) -> tuple[int, list[Disagreement]]:
    """How many examples the two models disagree on, and the `top_n` largest disagreements."""
    if rank_by not in ("symmetric_kl", "probability_gap"):
        raise ValueError(f"rank_by must be 'symmetric_kl' or 'probability_gap', not {rank_by!r}")
    p_t, p_s = teacher_logits.softmax(-1), student_logits.softmax(-1)
    t_conf, t_pred = p_t.max(-1)
    s_conf, s_pred = p_s.max(-1)
    s_of_t = p_s.gather(-1, t_pred[:, None]).squeeze(-1)  # (N,)
    sym_kl = (per_token_divergence(student_logits, teacher_logits=teacher_logits, kind="forward_kl")
              + per_token_divergence(student_logits, teacher_logits=teacher_logits, kind="reverse_kl"))
    score = sym_kl if rank_by == "symmetric_kl" else t_conf - s_of_t
    rows = torch.nonzero(t_pred != s_pred).flatten()
    order = rows[torch.sort(score[rows], descending=True, stable=True).indices][:top_n]
    index = indices.tolist() if indices is not None else list(range(len(labels)))
    top = [Disagreement(index=int(index[i]), label=int(labels[i]), teacher_prediction=int(t_pred[i]),
                        teacher_confidence=float(t_conf[i]), student_prediction=int(s_pred[i]),
                        student_confidence=float(s_conf[i]), student_prob_of_teacher=float(s_of_t[i]),
                        symmetric_kl=float(sym_kl[i])) for i in order.tolist()]
    return len(rows), top
