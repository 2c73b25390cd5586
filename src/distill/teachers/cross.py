"""The teacher's signal for a student with another tokenizer: the teacher's top-k log-probs at the
positions aligned with the student's (`distill.data.cross_blocks`), its token ids turned into the
student ids that spell them (-1 where the student's vocabulary has no such token).

    teacher = CrossLMTeacher(TopKCache(...over blocks.teacher...), vocab_map(teacher_tok, student_tok))
    teacher.signal(batch)   # batch: the student's block rows, with "index" and "teacher_position"

The inner signal is read by block index, so a top-k cache over the teacher's blocks (local, or built
through an endpoint) serves as it is.
"""

from __future__ import annotations

import torch

from distill.teachers.output import Teacher, TeacherOutput


class CrossLMTeacher:
    """Top-k teacher signal gathered at the student's aligned positions, in the student's token ids."""

    def __init__(self, inner: Teacher, vocab_map: torch.Tensor):
        self.inner, self.vocab_map = inner, vocab_map

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        out = self.inner.signal(batch)
        if out.topk_logprobs is None:
            raise ValueError("a cross-tokenizer teacher needs a top-k signal (a TopKCache), not full logits")
        position = batch["teacher_position"].clamp_min(0)  # (B, L); unaligned positions are masked in the loss
        k = out.topk_logprobs.shape[-1]
        at = position[..., None].expand(*position.shape, k)
        lp = out.topk_logprobs.gather(1, at)
        ids = out.topk_indices.gather(1, at)
        tail = out.tail_logprob.gather(1, position[..., None])
        mapping = self.vocab_map.to(ids.device)
        return TeacherOutput(topk_logprobs=lp, topk_indices=mapping[ids], tail_logprob=tail)
