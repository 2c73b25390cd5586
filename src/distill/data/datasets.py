"""`load_data`: the dataset a config names (built-in images, speech, text, or a CSV file), with its
label budget, size limit and extra unlabelled inputs applied. Speech and text loaders are imported
only when asked for (audio code, transformers)."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.core.errors import DataError
from distill.data.arrays import (
    UNLABELED,
    ArrayDataset,
    DataSplits,
    check_compatible,
    concat_arrays,
    keep_labels,
)
from distill.data.config import DataConfig
from distill.data.images import load_digits, load_fashion_mnist, load_mnist5k
from distill.data.tables import load_csv
from distill.data.unlabeled import read_raw


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the dataset named in the config, standardised with the training split's statistics."""
    if cfg.name == "digits":
        splits = load_digits(cfg)
    elif cfg.name == "mnist5k":
        splits = load_mnist5k(cfg)
    elif cfg.name == "fashion_mnist":
        splits = load_fashion_mnist(cfg)
    elif cfg.name == "spoken_digits":
        from distill.data.speech import (
            load_spoken_digits,  # audio code is loaded only when asked for
        )

        splits = load_spoken_digits(cfg)
    elif cfg.name == "bbc_news":
        from distill.data.text import load_bbc_news  # transformers is loaded only for text

        splits = load_bbc_news(cfg)
    elif cfg.name in ("npz", "images"):
        from distill.data.user_arrays import load_user_arrays

        splits = load_user_arrays(cfg)
    elif cfg.text_column is not None:
        from distill.data.text import load_text_table  # transformers is loaded only for text

        splits = load_text_table(cfg)
    else:
        splits = load_csv(cfg)
    if cfg.limit is not None and cfg.limit < len(splits.train):
        train = splits.train
        assert isinstance(train, ArrayDataset)
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.limit]
        splits.train = ArrayDataset(train.inputs[keep], train.labels[keep])
    if cfg.label_fraction < 1:
        splits = keep_labels(splits, cfg.label_fraction, cfg.seed)
    if cfg.unlabeled is not None:
        extra = read_unlabeled(Path(cfg.unlabeled), splits, "data.unlabeled")
        splits.unlabeled = extra if splits.unlabeled is None else concat_arrays(splits.unlabeled, extra)
    return splits


def read_unlabeled(path: Path, splits: DataSplits, key: str) -> ArrayDataset:
    """Unlabelled inputs from `path`, prepared like the dataset's own inputs (scaled, standardised or
    tokenized): an array file (.npy, or .npz with an `inputs` array) in the units of the dataset's
    files (pixels 0–255 for the MNIST family), or a text file with one example per line."""
    if splits.prepare is None:
        raise DataError(f"`{key}`: this dataset cannot read extra unlabelled inputs from a file; use "
                        "data.label_fraction, or pass unlabeled=... to distill.distill().")
    raw = read_raw(path, key)
    try:
        inputs = splits.prepare(raw)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"`{key}`: {path} cannot be turned into inputs of shape {splits.input_shape} "
                        f"({exc}).") from None
    unlabeled = ArrayDataset(inputs, torch.full((len(inputs),), UNLABELED))
    check_compatible(splits.train, unlabeled, f"`{key}` ({path})")
    return unlabeled


