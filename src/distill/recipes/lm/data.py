"""The corpus of a `distill lm` job as training and held-out token blocks: KJV verses, a text file's
documents, or JSONL rows (grouped by `data.group_column`), held out by document or by block; with
`teacher.route`, every token also names the teacher of its row (`distill.data.tokens.RoutedBlocks`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import DataError
from distill.data.tokens import (
    TextSplits,
    blocks_subset,
    encode_rows,
    pack_text,
    read_jsonl,
    read_kjv,
    split_blocks,
    split_documents,
)
from distill.recipes.lm.config import LMRunConfig


def load_text(cfg: LMRunConfig, tokenizer: Any) -> TextSplits:
    """Training and held-out blocks: whole documents held out (`data.holdout: documents`), or
    random blocks of the packed corpus (`blocks`)."""
    d = cfg.data
    documents = documents_of(cfg)
    if d.held_out_by == "documents":
        train_docs, val_docs = split_documents(documents, d.val_fraction, d.seed, str(d.path or d.corpus))
        splits = TextSplits(train=_blocks(cfg, train_docs, tokenizer, d.max_blocks),
                            val=_blocks(cfg, val_docs, tokenizer, None, held_out=True),
                            holdout="tail" if len(documents) == 1 else "documents")
    else:
        splits = split_blocks(_blocks(cfg, documents, tokenizer, d.max_blocks), d.val_fraction, d.seed)
    made = len(splits.train) + (len(splits.val) if d.held_out_by == "blocks" else 0)
    if d.max_blocks is not None and made < d.max_blocks:
        warnings.warn(f"data.max_blocks={d.max_blocks} asks for more blocks than the corpus makes ({made} blocks "
                      f"of {d.seq_len} tokens); training on {len(splits.train)} of them.", stacklevel=2)
    if d.val_blocks is not None and len(splits.val) > d.val_blocks:  # a seeded random draw, not the first ones
        pick = torch.randperm(len(splits.val), generator=torch.Generator().manual_seed(d.seed + 2))[:d.val_blocks]
        splits.val = blocks_subset(splits.val, pick.sort().values)
    elif d.val_blocks is not None and len(splits.val) < d.val_blocks:
        warnings.warn(f"data.val_blocks={d.val_blocks} asks for more held-out blocks than there are: "
                      f"{len(splits.val)} (data.val_fraction={d.val_fraction} of the corpus); evaluating on those "
                      f"{len(splits.val)}. Raise data.val_fraction for more.", stacklevel=2)
    return splits


def documents_of(cfg: LMRunConfig) -> list[Any]:
    """The corpus as documents: KJV verses, pieces of a text file, JSONL rows (grouped by group_column)."""
    d = cfg.data
    if d.corpus == "kjv":
        return read_kjv(d.path)
    if d.corpus == "text":
        text = Path(d.path).read_text()  # type: ignore[arg-type]
        if d.held_out_by != "documents" or d.document_separator is None:
            return [text]  # one text: its last part is held out
        return [doc for doc in text.split(d.document_separator) if doc.strip()]
    rows = read_jsonl(d.path)  # type: ignore[arg-type]
    check_routes(cfg, rows)
    if d.group_column is None:
        return [[row] for row in rows]
    groups: dict[str, list[dict]] = {}
    for n, row in enumerate(rows, 1):
        if d.group_column not in row:
            raise DataError(f"{d.path}, row {n}: no `{d.group_column}` key (data.group_column); give every row "
                            "one, or remove data.group_column.")
        groups.setdefault(json.dumps(row[d.group_column], sort_keys=True), []).append(row)
    return list(groups.values())


def _blocks(cfg: LMRunConfig, documents: list[Any], tokenizer: Any, max_blocks: int | None,
            held_out: bool = False) -> Any:
    d = cfg.data
    try:
        if d.corpus != "jsonl":
            return pack_text(documents, tokenizer, d.seq_len, max_blocks, seed=d.seed)
        rows = [row for group in documents for row in group]
        owner = [g for g, group in enumerate(documents) for _ in group]
        blocks = encode_rows(rows, tokenizer, d.seq_len, response_only=d.response_only, packing=d.packing,
                             source=str(d.path), route=routes(cfg, rows), document=owner)
        if not max_blocks or len(blocks) <= max_blocks:
            return blocks
        pick = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(d.seed + 1))[:max_blocks]
        return blocks_subset(blocks, pick.sort().values)  # drawn across the rows, not the first ones
    except DataError as exc:
        if not held_out or "fewer than one block" not in str(exc):
            raise
        raise DataError(f"The held-out documents ({len(documents)}) make no block of data.seq_len={d.seq_len} "
                        f"tokens ({exc}); raise data.val_fraction, or set data.holdout=blocks.") from None


def teacher_names(cfg: LMRunConfig) -> list[str]:
    """The job's teachers in order: `teacher.name`, then `teacher.others`."""
    return [cfg.teacher.name] + [o.name for o in cfg.teacher.others]


def check_routes(cfg: LMRunConfig, rows: list[dict[str, Any]]) -> None:
    """Every row's `teacher.route` value names a teacher (or is missing / null: the mix), before any compute."""
    key = cfg.teacher.route
    if key is None:
        return
    names = teacher_names(cfg)
    for n, row in enumerate(rows, 1):
        value = row.get(key)
        if value is not None and value not in names:
            raise DataError(f"{cfg.data.path}, row {n}: `{key}` (teacher.route) is {value!r}, which names no "
                            f"teacher; the teachers are {names} (teacher.name, teacher.others[].name). Fix the "
                            "value, add that teacher, or leave the key out for the mix.")


def routes(cfg: LMRunConfig, rows: list[dict[str, Any]]) -> list[int] | None:
    """Per row, the index of the teacher its `teacher.route` key names (-1: none); None without a route."""
    if cfg.teacher.route is None:
        return None
    names = teacher_names(cfg)
    return [names.index(row[cfg.teacher.route]) if row.get(cfg.teacher.route) is not None else -1 for row in rows]
