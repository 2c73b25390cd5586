"""The pieces of `distill lm` for a student whose tokenizer differs from the teacher's
(`student.tokenizer`, or a `student.model` with its own): which tokenizer, the text cut into chunks
both tokenize (`distill.data.cross_blocks`), and the student built for its own vocabulary. The job
(`distill.recipes.lm.pipeline`) builds the teacher's top-k cache over its blocks (locally or through
`teacher.endpoint`), or with `teacher.signal: live` runs the teacher on the text of every batch (the
student's own samples in on-policy rounds), teaches the student at the positions where both have read
the same characters
(`kd.cross`: uld, matched, matched_uld), trains a CE baseline on the same student blocks, and scores
every model in bits per byte on the same held-out text."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.errors import ConfigError
from distill.data.cross_blocks import cross_blocks
from distill.data.tokens import TextSplits, split_documents
from distill.models import causal_lm as lm_models
from distill.recipes.lm.config import LMRunConfig


def student_tokenizer(cfg: LMRunConfig, teacher_tokenizer: Any) -> Any | None:
    """The student's own tokenizer when it differs from the teacher's, else None."""
    if cfg.student.tokenizer is not None and cfg.student.tokenizer.startswith("builtin:"):
        tok = lm_models.builtin_tokenizer(cfg.student.tokenizer.removeprefix("builtin:"), "student.tokenizer")
    elif cfg.student.tokenizer is not None:
        from distill.data.tokenizers import load_tokenizer  # a tokenizer folder, hub id or encoder name

        tok = load_tokenizer(cfg.student.tokenizer)
    elif cfg.student.model is not None:
        tok = lm_models.load_tokenizer(cfg.student.model, "student.model")
    else:
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    if lm_models.tokenizer_fingerprint(tok) == lm_models.tokenizer_fingerprint(teacher_tokenizer):
        return None
    if cfg.teacher.others:
        raise ConfigError("A student with another tokenizer learns from one teacher: remove teacher.others, or give "
                          "the student the teachers' tokenizer.")
    if cfg.data.held_out_by == "blocks":
        raise ConfigError("A student with another tokenizer is trained on text chunks held out by document: set "
                          "data.holdout=documents (the default for text and jsonl).")
    return tok


def texts(documents: list[Any], source: str) -> list[str]:
    """The documents as text: JSONL row groups become their rows' `text`, one paragraph each (prompt/
    response and chat rows are refused, naming the row: their chunks would mix prompt and answer)."""
    out = []
    for doc in documents:
        if isinstance(doc, str):
            out.append(doc)
            continue
        for row in doc:
            if not isinstance(row.get("text"), str):
                raise ConfigError(f"{source}: a student with another tokenizer is trained on text, and the row "
                                  f"{str(row)[:80]} has no `text` (prompt/response and chat rows are not supported "
                                  "with another tokenizer yet); give {\"text\": ...} rows.")
        out.append("\n\n".join(row["text"] for row in doc))
    return out


def cross_splits(cfg: LMRunConfig, tokenizer: Any, student_tok: Any, documents: list[str]
                 ) -> tuple[TextSplits, TextSplits]:
    """(the teacher's blocks, the student's aligned blocks) of the same chunks, split by document."""
    d = cfg.data
    train_docs, val_docs = split_documents(documents, d.val_fraction, d.seed, str(d.path or d.corpus))
    train = cross_blocks(train_docs, student_tok, tokenizer, d.seq_len, max_blocks=d.max_blocks)
    val = cross_blocks(val_docs, student_tok, tokenizer, d.seq_len, max_blocks=d.val_blocks)
    holdout = "tail" if len(documents) == 1 else "documents"
    return TextSplits(train.teacher, val.teacher, holdout), TextSplits(train.student, val.student, holdout)


def cross_student(cfg: LMRunConfig, teacher: nn.Module, student_tok: Any) -> nn.Module:
    """`student.model`, or a model of the teacher's class for the student's vocabulary (`student.config`)."""
    s = cfg.student
    if s.model is not None:
        return lm_models.load_causal_lm(s.model, "student.model")
    if s.layers is not None:
        raise ConfigError("student.layers copies the teacher's layers, embeddings included: with another "
                          "tokenizer build the student from student.config (e.g. {num_hidden_layers: 4}).")
    overrides = {**s.config, "vocab_size": len(student_tok), "pad_token_id": student_tok.pad_token_id,
                 "eos_token_id": student_tok.eos_token_id, "bos_token_id": getattr(student_tok, "bos_token_id", None)}
    return lm_models.student_from_teacher(teacher, overrides=overrides, seed=cfg.train.seed)
