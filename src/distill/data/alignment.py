"""Where two tokenizations of one text agree: the positions at which a teacher and a student with
different tokenizers have read exactly the same characters, and so predict the same continuation.

    s, t = with_ends(student_tok, text), with_ends(teacher_tok, text)
    pairs = aligned_positions(s, t)        # [(student position, teacher position), ...]
    to_student = vocab_map(teacher_tok, student_tok)   # teacher id -> the student id spelled the same, or -1

A position is where a model has read tokens 0..i and predicts token i+1; two positions align when
their last tokens end at the same character (token boundaries coincide, as in the sequence
alignment of GOLD and DSKD). Between aligned positions the two models read different pieces and
are not compared. Fast tokenizers give character offsets; a tokenizer without them
(`return_offsets_mapping` unsupported) is refused, naming it. (ULD itself needs no vocabulary map,
but it is applied at aligned positions here too.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.core.errors import DataError


@dataclass(frozen=True)
class WithEnds:
    """A text's token ids and, for each token, the character offset where it ends."""

    ids: list[int]
    ends: list[int]


def with_ends(tokenizer: Any, text: str) -> WithEnds:
    """Token ids of `text` (no special tokens) with each token's end offset in characters."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise DataError(f"The tokenizer {type(tokenizer).__name__} gives no character offsets ({exc}); "
                        "cross-tokenizer distillation aligns positions by them: use the fast version of this "
                        "tokenizer (a tokenizer.json; AutoTokenizer with use_fast=True).") from None
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise DataError(f"The tokenizer {type(tokenizer).__name__} returned no offset_mapping; cross-tokenizer "
                        "distillation aligns positions by them: use its fast version (a tokenizer.json).")
    return WithEnds(list(enc["input_ids"]), [int(end) for _, end in offsets])


def aligned_positions(student: WithEnds, teacher: WithEnds) -> list[tuple[int, int]]:
    """(student position, teacher position) pairs whose last tokens end at the same character, in
    order; where several tokens of one model end at one character (a character split into bytes),
    the last of them is the position (it has read the whole character)."""
    last_s = _last_at_each_end(student.ends)
    last_t = _last_at_each_end(teacher.ends)
    return [(last_s[end], last_t[end]) for end in sorted(set(last_s) & set(last_t))]


def _last_at_each_end(ends: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for position, end in enumerate(ends):
        out[end] = position
    return out


def vocab_map(teacher: Any, student: Any) -> torch.Tensor:
    """For each teacher id, the student id whose text is exactly the same (else -1): the tokens whose
    probability mass the two vocabularies can share. Tokens that decode to nothing or to part of a
    character (U+FFFD) are not matched, and each student id is matched once (the first teacher id)."""
    def spellings(tokenizer: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            if text and "\ufffd" not in text:
                out.setdefault(text, token_id)
        return out

    student_ids = spellings(student)
    mapping = torch.full((len(teacher),), -1, dtype=torch.long)
    taken: set[int] = set()  # one teacher id per student id, so no student mass is counted twice
    for token_id in range(len(teacher)):
        text = teacher.decode([token_id])
        match = student_ids.get(text, -1) if text and "\ufffd" not in text else -1
        if match >= 0 and match not in taken:
            mapping[token_id] = match
            taken.add(match)
    return mapping
