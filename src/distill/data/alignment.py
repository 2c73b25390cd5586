"""Where two tokenizations of one text agree: the positions at which a teacher and a student with
different tokenizers have read exactly the same characters, and so predict the same continuation.

    s, t = with_ends(student_tok, text), with_ends(teacher_tok, text)
    pairs = aligned_positions(s, t)        # [(student position, teacher position), ...]
    to_student = vocab_map(teacher_tok, student_tok)   # teacher id -> the student id spelled the same, or -1

A position is where a model has read tokens 0..i and predicts token i+1; two positions align when
their last tokens end at the same character (token boundaries coincide, as in the sequence
alignment of GOLD and DSKD). Between aligned positions the two models read different pieces and
are not compared. Fast tokenizers give character offsets; for a tokenizer without them (a slow one)
the ends come from decoding its tokens, when they spell the text back exactly; one that does neither
is refused, naming it, since every method (ULD too: it needs no vocabulary map, but is applied at
aligned positions) compares the models where they have read the same characters.
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
    """Token ids of `text` (no special tokens) with each token's end offset in characters: from the
    tokenizer's offsets, or, for a tokenizer without them (a slow one), from decoding its tokens when
    they spell `text` back exactly; otherwise refused, naming it."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc.get("offset_mapping")
    except (NotImplementedError, ValueError, TypeError):
        offsets = None
    if offsets is not None:
        return WithEnds(list(enc["input_ids"]), [int(end) for _, end in offsets])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ends = decoded_ends(tokenizer, ids)
    if ends is None or (ends[-1] if ends else 0) != len(text) or _decode(tokenizer, ids) != text:
        raise DataError(f"The tokenizer {type(tokenizer).__name__} gives no character offsets and its tokens do not "
                        f"decode back to the text ({text[:40]!r}…): no kd.cross method can align its positions with "
                        "the teacher's (each compares the two models where they have read the same characters). Use "
                        "its fast version (a tokenizer.json; AutoTokenizer with use_fast=True).")
    return WithEnds(ids, ends)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def decoded_ends(tokenizer: Any, ids: list[int], window: int = 6) -> list[int] | None:
    """Each token's end in the text the tokens decode to, from the text each adds after the `window`
    tokens before it (decoding is not additive token by token: byte pieces, leading-space markers);
    None when the ends are not increasing or do not add up to the whole decoded text."""
    ends, at = [], 0
    for j in range(len(ids)):
        before = ids[max(0, j - window): j]
        at += len(_decode(tokenizer, before + [ids[j]])) - len(_decode(tokenizer, before))
        ends.append(at)
    if any(b < a for a, b in zip(ends, ends[1:])) or (ends and ends[-1] != len(_decode(tokenizer, ids))):
        return None
    return ends


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
