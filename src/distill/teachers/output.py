"""What a teacher says about a batch, whatever the teacher is: one type and one protocol.

Every teacher — a live model, a cache, an ensemble, an endpoint's log-probs — answers
`signal(batch) -> TeacherOutput`, so training cannot tell them apart. Several language-model teachers
answer one output made of their parts and a weight per token and part (`TeacherOutput.mixture`):
the token losses weigh each part's divergence by it. A batch is the dict the data
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
    valid: torch.Tensor | None = None  # (...,) bool: where it speaks (a teacher with another tokenizer: aligned)
    parts: tuple[TeacherOutput, ...] = ()
    part_weights: torch.Tensor | None = None  # (..., len(parts)): each part's weight at each token
    sampled: bool = False  # top-k holds only the log-prob of the token that follows (k = 1, a server that
    # returns no alternatives): the token losses then estimate reverse KL from it (`distill.losses.tokens`)

    def __post_init__(self) -> None:
        if self.parts:
            if self.logits is not None or self.topk_logprobs is not None or self.part_weights is None \
                    or self.part_weights.shape[-1] != len(self.parts):
                raise ValueError("a mixture TeacherOutput holds its parts and one weight per part, nothing else")
            return
        if (self.logits is None) == (self.topk_logprobs is None):
            raise ValueError("a TeacherOutput holds either full logits or top-k log-probs (with their ids)")
        if self.topk_logprobs is not None and self.topk_indices is None:
            raise ValueError("top-k log-probs need their token ids (topk_indices)")
        if self.sampled and (self.topk_logprobs is None or self.topk_logprobs.shape[-1] != 1):
            raise ValueError("a sampled-token output holds one log-prob per position (top-k with k = 1)")

    @classmethod
    def mixture(cls, parts: list[TeacherOutput], weights: torch.Tensor) -> TeacherOutput:
        """Several teachers' outputs, part i weighing `weights[..., i]` at each token (weights sum to 1)."""
        if any(p.parts for p in parts):
            raise ValueError("a mixture's parts are single teachers' outputs")
        return cls(parts=tuple(parts), part_weights=weights)

    def components(self) -> list[tuple[TeacherOutput, torch.Tensor | None]]:
        """(output, per-token weight) of each teacher; one teacher's output is its own part, weight None."""
        if not self.parts:
            return [(self, None)]
        return [(p, self.part_weights[..., i]) for i, p in enumerate(self.parts)]  # type: ignore[index]

    @property
    def sparse(self) -> bool:
        return self.logits is None

    def full_logits(self) -> torch.Tensor:
        """The logits; a top-k output has none (losses over layers or classes need the full view)."""
        if self.parts:
            raise ValueError("this teacher output mixes several teachers: only the token divergences take it")
        if self.logits is None:
            raise ValueError("this teacher output is top-k log-probs, not full logits: use a live teacher, or a "
                             "loss that takes a top-k teacher (the token divergences)")
        return self.logits

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        """The `teacher_*` arguments of `distill.losses.divergences.token_divergence` (one teacher)."""
        if self.parts:
            raise ValueError("this teacher output mixes several teachers: weigh each of its components()")
        return {"teacher_logits": self.logits, "teacher_topk_logprobs": self.topk_logprobs,
                "teacher_topk_indices": self.topk_indices, "teacher_tail_logprob": self.tail_logprob}


class Teacher(Protocol):
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        """The teacher's output on a batch (see the module docstring for its keys)."""
        ...
