"""The teacher's signal for a student with another tokenizer, in the student's positions and ids:
the teacher's top-k log-probs at the positions aligned with the student's (where both have read
the same characters, `distill.data.alignment`), its token ids turned into the student ids that
spell them (-1 where the student's vocabulary has no such token); `valid` marks the aligned positions.

    teacher = CrossLMTeacher(TopKCache(...over blocks.teacher...), vocab_map(teacher_tok, student_tok))
    teacher.signal(batch)   # batch: the student's block rows, with "index" and "teacher_position"

    teacher = CrossLiveTeacher(model, teacher_tok, student_tok, vocab_map(...), k=64)
    teacher.signal(batch)   # any student tokens, the student's own samples included

The cached teacher reads its inner signal by block index, so a top-k cache over the teacher's blocks
(local, or built through an endpoint) serves as it is. The live teacher reads the text the student's
tokens spell, tokenizes it its own way, runs, and aligns on every batch: what on-policy rounds need,
where the student writes the text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.data.alignment import WithEnds, aligned_positions, with_ends
from distill.teachers.output import Teacher, TeacherOutput
from distill.teachers.tokens import teacher_logits, topk_of


DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}  # the text as the tokens spell it


class CrossLMTeacher:
    """Top-k teacher signal gathered at the student's aligned positions, in the student's token ids."""

    def __init__(self, inner: Teacher, vocab_map: torch.Tensor):
        self.inner, self.vocab_map = inner, vocab_map

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        out = self.inner.signal(batch)
        if out.topk_logprobs is None:
            raise ValueError("a cross-tokenizer teacher needs a top-k signal (a TopKCache), not full logits")
        return at_student_positions(out, batch["teacher_position"], self.vocab_map)


class CrossLiveTeacher:
    """The teacher model run on the text of the student's tokens, aligned on every batch."""

    def __init__(self, model: nn.Module, teacher_tokenizer: Any, student_tokenizer: Any, vocab_map: torch.Tensor, *,
                 k: int, vocab: int, teacher_len: int | None = None):
        self.model = model.eval().requires_grad_(False)
        self.teacher_tok, self.student_tok, self.vocab_map = teacher_tokenizer, student_tokenizer, vocab_map
        self.k, self.vocab, self.teacher_len = k, vocab, teacher_len

    @torch.no_grad()
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        width = self.teacher_len or 2 * ids.shape[1]
        pad = self.teacher_tok.pad_token_id
        t_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        t_mask = torch.zeros((len(ids), width), dtype=torch.bool)
        position = torch.full(ids.shape, -1, dtype=torch.long)
        for row in range(len(ids)):
            student = student_ends(self.student_tok, ids[row][mask[row]].tolist())
            text = self.student_tok.decode(student.ids, **DECODE)
            teacher = with_ends(self.teacher_tok, text)
            kept = teacher.ids[:width]
            t_ids[row, :len(kept)], t_mask[row, :len(kept)] = torch.tensor(kept, dtype=torch.long), True
            for j, i in aligned_positions(student, teacher):
                if i < len(kept):
                    position[row, j] = i
        device = next(self.model.parameters()).device
        logits = teacher_logits(self.model, {"input_ids": t_ids.to(device), "attention_mask": t_mask.to(device)},
                                self.vocab)
        lp, idx, tail = topk_of(logits, self.k)
        out = TeacherOutput(topk_logprobs=lp, topk_indices=idx, tail_logprob=tail)
        return at_student_positions(out, position.to(ids.device), self.vocab_map)


def student_ends(tokenizer: Any, ids: list[int]) -> WithEnds:
    """`ids` as the tokenizer wrote them (a sample need not be how it would tokenize its own text) with
    each token's end in the decoded text: the length of the text of the tokens up to it."""
    prefixes = tokenizer.batch_decode([ids[: j + 1] for j in range(len(ids))], **DECODE) if ids else []
    return WithEnds(list(ids), [len(p) for p in prefixes])


def at_student_positions(out: TeacherOutput, teacher_position: torch.Tensor, vocab_map: torch.Tensor
                          ) -> TeacherOutput:
    position = teacher_position.clamp_min(0)  # (B, L); unaligned positions are not `valid`
    k = out.topk_logprobs.shape[-1]
    at = position[..., None].expand(*position.shape, k)
    lp = out.topk_logprobs.gather(1, at)
    ids = out.topk_indices.gather(1, at)
    tail = out.tail_logprob.gather(1, position[..., None])
    mapping = vocab_map.to(ids.device)
    return TeacherOutput(topk_logprobs=lp, topk_indices=mapping[ids], tail_logprob=tail, valid=teacher_position >= 0)
