"""Training blocks for a student whose tokenizer differs from its teacher's: the corpus cut into text
chunks, each tokenized by both, with the student's positions mapped to the teacher's that have read
the same characters.

    blocks = cross_blocks(documents, student_tok, teacher_tok, seq_len=128)
    blocks.student          # TokenBlocks (N, seq_len): what the student reads and predicts
    blocks.teacher          # TokenBlocks (N, teacher_len): the same chunks in the teacher's tokens
    blocks.teacher_position # (N, seq_len): for student position j, the aligned teacher position, or -1

A chunk is at most `seq_len - 2` student tokens of one document (cut at a student token's end, then
tokenized again on its own by both tokenizers, so both start reading at the same character). The
teacher's blocks are `teacher_len` wide (twice `seq_len` by default); a chunk the teacher needs more
tokens for keeps its first `teacher_len` and aligns only within them. Block i of both is the same
chunk, so a teacher cache built over `teacher` is read with the student's block index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.core.errors import DataError
from distill.data.alignment import aligned_positions, with_ends
from distill.data.tokens import TokenBlocks, special_id


@dataclass
class AlignedBlocks(TokenBlocks):
    """The student's blocks with, per position, the aligned teacher position (-1: none) in every batch."""

    teacher_position: torch.Tensor = None  # type: ignore[assignment]  # (N, L) int64

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().batch(index), "teacher_position": self.teacher_position[index]}

    @property
    def aligned_share(self) -> float:
        """The share of the trained positions that have a teacher position to learn from."""
        trained = self.loss_mask
        return float((self.teacher_position[trained] >= 0).float().mean()) if trained.any() else 0.0


@dataclass
class CrossBlocks:
    student: TokenBlocks
    teacher: TokenBlocks
    teacher_position: torch.Tensor  # (N, seq_len) int64, -1 where the student's position has no match

    def __len__(self) -> int:
        return len(self.student)

    @property
    def aligned_share(self) -> float:
        return self.student.aligned_share


def cross_blocks(documents: list[str], student_tokenizer: Any, teacher_tokenizer: Any, seq_len: int, *,
                 teacher_len: int | None = None, max_blocks: int | None = None) -> CrossBlocks:
    """The chunks of `documents` as aligned student and teacher blocks (see the module docstring)."""
    teacher_len = teacher_len or 2 * seq_len
    chunks = [chunk for doc in documents for chunk in _chunks(doc, student_tokenizer, seq_len - 2)]
    if max_blocks is not None:
        chunks = chunks[:max_blocks]
    if not chunks:
        raise DataError("The corpus has no text to cut into blocks.")
    s_pad, t_pad = special_id(student_tokenizer, "pad"), special_id(teacher_tokenizer, "pad")
    student = _empty(len(chunks), seq_len, s_pad)
    teacher = _empty(len(chunks), teacher_len, t_pad)
    position = torch.full((len(chunks), seq_len), -1, dtype=torch.long)
    for n, chunk in enumerate(chunks):
        s, t = with_ends(student_tokenizer, chunk), with_ends(teacher_tokenizer, chunk)
        s_ids, t_ids = s.ids[:seq_len], t.ids[:teacher_len]
        _fill(student, n, s_ids)
        _fill(teacher, n, t_ids)
        for j, i in aligned_positions(s, t):
            if j < len(s_ids) and i < len(t_ids):
                position[n, j] = i
    return CrossBlocks(AlignedBlocks(student.input_ids, student.attention_mask, student.loss_mask, teacher_position=position),
                       teacher, position)


def _chunks(document: str, tokenizer: Any, tokens: int) -> list[str]:
    """`document` cut at the end of every `tokens`-th token (each piece keeps its leading spaces)."""
    ends = with_ends(tokenizer, document).ends
    cuts = [ends[i] for i in range(tokens - 1, len(ends), tokens)]
    if not cuts or cuts[-1] < len(document.rstrip()):
        cuts.append(len(document))
    starts = [0] + cuts[:-1]
    return [document[a:b] for a, b in zip(starts, cuts) if document[a:b].strip()]


def _empty(n: int, width: int, pad: int) -> TokenBlocks:
    return TokenBlocks(torch.full((n, width), pad, dtype=torch.long), torch.zeros((n, width), dtype=torch.bool),
                       torch.zeros((n, width), dtype=torch.bool))


def _fill(blocks: TokenBlocks, row: int, ids: list[int]) -> None:
    """Row `row` holds `ids` (right-padded); every position with a next token inside is trained."""
    blocks.input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    blocks.attention_mask[row, :len(ids)] = True
    blocks.loss_mask[row, :max(0, len(ids) - 1)] = True
