"""Distillation objectives: pure loss functions plus small specs that say which signals they need.

A method is data plus a loss: `KD` needs the teacher's logits, `CE` does not. Both return the
total loss and each named component, so every term can be logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.config import Schedule
from distill.divergences import token_divergence


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class ids (B,) or class probabilities (B, C)."""
    return F.cross_entropy(student_logits.float(), targets)


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (Hinton et al. 2015, §2).

    Args:
        student_logits: (B, C) student logits.
        teacher_logits: (B, C) teacher logits.
        temperature: T > 0; the T² factor keeps gradient magnitudes comparable across T.
    """
    return token_divergence(student_logits, teacher_logits=teacher_logits, kind="forward_kl",
                            temperature=temperature) * temperature**2


def scheduled(value: float | Schedule, progress: float) -> float:
    """A constant, or a schedule evaluated at training progress in [0, 1]."""
    if not isinstance(value, Schedule):
        return float(value)
    if value.kind == "linear":
        w = progress
    else:
        w = 0.5 * (1 - math.cos(math.pi * progress))
    return value.start + (value.end - value.start) * w


@dataclass(frozen=True)
class KD:
    """Soft targets: α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE(labels); α and T may be schedules."""

    temperature: float | Schedule = 4.0
    alpha: float | Schedule = 0.9
    needs_teacher: bool = True

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                 targets: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        assert teacher_logits is not None, "KD needs teacher logits"
        t, a = scheduled(self.temperature, progress), scheduled(self.alpha, progress)
        kd = soft_target_kl(student_logits, teacher_logits, t)
        if a >= 1.0:  # pure distillation: labels (possibly absent) are not used
            return {"loss": kd, "kd": kd}
        ce = cross_entropy(student_logits, targets)
        return {"loss": a * kd + (1 - a) * ce, "kd": kd, "ce": ce}


@dataclass(frozen=True)
class CE:
    """Plain supervised training on labels: the no-teacher baseline."""

    needs_teacher: bool = False

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                 targets: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        ce = cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}


Objective = KD | CE
