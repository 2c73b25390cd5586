"""What a teacher says about a batch, whatever the teacher is: one type and one protocol.

Every teacher — a live model, a cache, an ensemble, an endpoint's log-probs — answers
`signal(batch) -> TeacherOutput`, so training cannot tell them apart. A batch is the dict the data
gives: `inputs` (and the batch's `labels`, for teachers that weigh themselves by them) for a
classifier, `input_ids` and `attention_mask` for a language model, and always each example's
dataset `index`, by which a cache looks its rows up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class TeacherOutput:
    """Full logits (..., V), or the teacher's top-k log-probs with their ids (..., k) and the log of
    the mass outside them (..., 1); `distill.losses.divergences` takes either."""

    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    tail_logprob: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.topk_logprobs is None):
            raise ValueError("a TeacherOutput holds either full logits or top-k log-probs (with their ids)")
        if self.topk_logprobs is not None and self.topk_indices is None:
            raise ValueError("top-k log-probs need their token ids (topk_indices)")

    @property
    def sparse(self) -> bool:
        return self.logits is None

    def full_logits(self) -> torch.Tensor:
        """The logits; a top-k output has none (losses over layers or classes need the full view)."""
        if self.logits is None:
            raise ValueError("this teacher output is top-k log-probs, not full logits: use a live teacher, or a "
                             "loss that takes a top-k teacher (the token divergences)")
        return self.logits

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        """The `teacher_*` arguments of `distill.losses.divergences.token_divergence`."""
        return {"teacher_logits": self.logits, "teacher_topk_logprobs": self.topk_logprobs,
                "teacher_topk_indices": self.topk_indices, "teacher_tail_logprob": self.tail_logprob}


class Teacher(Protocol):
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        """The teacher's output on a batch (see the module docstring for its keys)."""
        ...
