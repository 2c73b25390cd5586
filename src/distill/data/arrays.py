"""In-memory datasets and their splits: arrays of inputs and labels, deterministic stratified
splits standardised with the training split's statistics, label checks, and unlabelled rows.

Every example is served as a dict ``{"inputs", "labels", "index"}``: the index lets a cached
teacher signal look up its outputs for that example, on any rank of a distributed run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.core.errors import DataError

UNLABELED = -1  # the label of a transfer-set example: inputs only, which the teacher scores


class ArrayDataset(Dataset):
    """In-memory examples `inputs` (N, ...) and integer `labels` (N,); inputs are float, except
    integer ones wider than a byte (token ids), kept as int64."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise DataError(f"inputs has {len(inputs)} rows but labels has {len(labels)}; they must match.")
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            row = int(torch.nonzero(labels != labels.round())[0, 0])
            raise DataError(f"labels must be integer class ids; row {row} holds {float(labels[row])!r}, which would be "
                            "truncated. Map them to ids, e.g. np.unique(labels, return_inverse=True)[1].")
        token_ids = inputs.dtype in (torch.int16, torch.int32, torch.int64)  # uint8 stays image-like: float
        self.inputs = inputs.long() if token_ids else inputs.float()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.inputs[i], "labels": self.labels[i], "index": i}


class IndexedDataset(Dataset):
    """Adapts a user dataset yielding ``(x, y)`` or dicts to the ``{"inputs","labels","index"}`` form."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if isinstance(item, dict):
            if "inputs" in item:
                return {"inputs": item["inputs"], "labels": item.get("labels", -1), "index": i}
            if "input_ids" in item:  # a Hugging Face row: {"input_ids", "attention_mask", "labels"}
                return {"inputs": token_row(item, i), "labels": item.get("labels", item.get("label", -1)),
                        "index": i}
            raise DataError(f"dataset item {i} is a dict with keys {sorted(item)}; give it `inputs` (or a "
                            "tokenizer's `input_ids` and `attention_mask`) and `labels`.")
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            x = token_row(item[0], i) if isinstance(item[0], dict) else item[0]
            return {"inputs": x, "labels": item[1], "index": i}
        raise DataError(
            f"dataset item {i} is a {type(item).__name__}; return (inputs, label) or a dict "
            "with keys 'inputs' and 'labels'."
        )


def token_row(row: dict[str, Any], i: int) -> torch.Tensor:
    """A tokenizer's output for one text as the (2, L) int64 row the text models take:
    [input_ids; attention_mask] (the mask all ones when the row has none)."""
    if "input_ids" not in row:
        raise DataError(f"dataset item {i}: its inputs are a dict with keys {sorted(row)}; a text row needs "
                        "`input_ids` (and `attention_mask`), as a tokenizer returns them.")
    ids = torch.as_tensor(row["input_ids"], dtype=torch.int64)
    mask = torch.as_tensor(row.get("attention_mask", torch.ones_like(ids)), dtype=torch.int64)
    if ids.dim() != 1 or mask.shape != ids.shape:
        raise DataError(f"dataset item {i}: input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} "
                        "must be one row each, of the same length (tokenize one text per row).")
    return torch.stack([ids, mask])


def as_indexed(data: Dataset) -> Dataset:
    return data if isinstance(data, (ArrayDataset, IndexedDataset)) else IndexedDataset(data)


@dataclass(frozen=True)
class Standardise:
    """Raw inputs (as the dataset's files hold them) to model inputs: scaled, reshaped, standardised
    with the training split's statistics. Extra inputs (a transfer set) go through the same steps."""

    shape: tuple[int, ...]
    scale: float
    mean: float
    std: float

    def __call__(self, raw: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
        if x.ndim >= 1 and x[0].numel() == int(np.prod(self.shape)) and tuple(x.shape[1:]) != self.shape:
            x = x.reshape(len(x), *self.shape)  # flat rows of the right size: the dataset's layout
        return (x / self.scale - self.mean) / self.std


@dataclass
class DataSplits:
    """Train/val/test splits of one dataset plus what models need to know about it.

    `unlabeled` holds inputs without labels (label `UNLABELED`) that only a teacher can score: the
    transfer set. `prepare` turns raw inputs (an array as the dataset's files hold them, or texts)
    into model inputs, for reading extra unlabelled inputs from a file.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    unlabeled: Dataset | None = None
    prepare: Callable[[Any], torch.Tensor] | None = None
    modality: str = "features"  # images | audio | text | features: what augmentations make sense


def modality_of(example: torch.Tensor) -> str:
    """What a single example looks like: float (C, H, W) → images, token ids → text, else features."""
    if not example.is_floating_point():
        return "text"
    return "images" if example.dim() == 3 else "features"


def stratified_split(labels: torch.Tensor, fractions: tuple[float, float], seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic per-class split into (train, first fraction, second fraction) indices."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_a, n_b = (round(len(idx) * f) for f in fractions)
        parts[1].append(idx[:n_a])
        parts[2].append(idx[n_a:n_a + n_b])
        parts[0].append(idx[n_a + n_b:])
    return tuple(torch.sort(torch.cat(p)).values for p in parts)  # type: ignore[return-value]


def check_compatible(labelled: Dataset, unlabeled: Dataset, where: str) -> None:
    """The unlabelled inputs must look like the labelled ones: same shape per example, same dtype."""
    first = as_indexed(labelled)[0]["inputs"]
    other = as_indexed(unlabeled)[0]["inputs"]
    a, b = torch.as_tensor(first), torch.as_tensor(other)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise DataError(f"{where}: unlabelled inputs have shape {tuple(b.shape)} ({b.dtype}) per example but "
                        f"the labelled ones {tuple(a.shape)} ({a.dtype}); give the unlabelled inputs in the "
                        "labelled data's shape and type.")


def keep_labels(splits: DataSplits, fraction: float, seed: int) -> DataSplits:
    """Keep labels on a stratified `fraction` of the training and validation splits; the rest of the
    training split becomes unlabelled inputs (the few-labels, much-raw-data setting). The test split
    keeps every label: it measures, it does not teach."""
    train, val = splits.train, splits.val
    if not (isinstance(train, ArrayDataset) and isinstance(val, ArrayDataset)):
        raise DataError("data.label_fraction needs an in-memory dataset (a built-in one or csv).")
    kept, dropped, _ = stratified_split(train.labels, (1 - fraction, 0.0), seed)
    val_kept, _, _ = stratified_split(val.labels, (1 - fraction, 0.0), seed)
    if len(kept) == 0 or len(val_kept) == 0:
        raise DataError(f"data.label_fraction={fraction} keeps no labelled example of the {len(train)} "
                        f"training / {len(val)} validation examples; raise it.")
    splits.train = ArrayDataset(train.inputs[kept], train.labels[kept])
    splits.val = ArrayDataset(val.inputs[val_kept], val.labels[val_kept])
    splits.unlabeled = ArrayDataset(train.inputs[dropped], torch.full((len(dropped),), UNLABELED))
    return splits


def concat_arrays(first: Dataset, second: Dataset) -> ArrayDataset:
    """Two in-memory datasets as one (rows of `first`, then of `second`)."""
    assert isinstance(first, ArrayDataset) and isinstance(second, ArrayDataset)
    return ArrayDataset(torch.cat([first.inputs, second.inputs]), torch.cat([first.labels, second.labels]))


def make_splits(x: torch.Tensor, y: torch.Tensor, train_i: torch.Tensor, val_i: torch.Tensor,
            test_i: torch.Tensor, class_names: list[str] | None, scale: float = 1.0) -> DataSplits:
    """Splits of `x` (already divided by `scale`), standardised with the training split's statistics."""
    if (y < 0).any():
        raise DataError("labels must be integers >= 0 (class ids); found negative values.")
    if len(train_i) == 0:
        raise DataError(f"val_fraction + test_fraction leave none of the {len(y)} examples for training; "
                        "lower them, or give more examples.")
    mean, std = x[train_i].mean(), x[train_i].std().clamp_min(1e-8)
    z = (x - mean) / std
    if not bool(torch.isfinite(z).all()):
        raise DataError(f"inputs are too large to standardise in float32 (largest |value| "
                        f"{float(x.abs().max()):.3g}); rescale them first.")
    x = z
    num_classes = max(int(y.max()) + 1, len(class_names or []))  # a named class may have no example
    distinct = len(torch.unique(y))
    if num_classes > max(10_000, 100 * distinct):  # a model with that many outputs would not fit in memory
        raise DataError(f"labels go up to {num_classes - 1} but only {distinct} distinct values occur: they "
                        "look like ids, not class indices 0..C-1. Map them, e.g. "
                        "np.unique(labels, return_inverse=True)[1].")
    return DataSplits(
        train=ArrayDataset(x[train_i], y[train_i]),
        val=ArrayDataset(x[val_i], y[val_i]),
        test=ArrayDataset(x[test_i], y[test_i]),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        class_names=class_names or [str(i) for i in range(num_classes)],
        prepare=Standardise(tuple(x.shape[1:]), scale, float(mean), float(std)),
        modality=modality_of(x[0]),
    )


def check_labels(dataset: Dataset, num_classes: int, where: str, unlabeled_ok: bool = False) -> None:
    """Fail clearly, before any training, when an in-memory dataset's labels fall outside the classes."""
    if isinstance(dataset, ArrayDataset):
        check_label_range(dataset.labels, num_classes, where, unlabeled_ok)


def check_label_range(labels: torch.Tensor, num_classes: int, where: str, unlabeled_ok: bool = False) -> None:
    """Class ids must lie in [0, num_classes), or be `UNLABELED` when a teacher scores those examples;
    `labels` should be a host tensor (no device sync)."""
    if labels.dtype.is_floating_point or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo == UNLABELED and not unlabeled_ok:
        raise DataError(f"{where}: some examples are unlabelled (label {UNLABELED}), and only a teacher can "
                        "teach from them; train without a teacher on the labelled examples alone, or "
                        "distil (a KD objective scores unlabelled inputs with the teacher).")
    if lo < (UNLABELED if unlabeled_ok else 0) or hi >= num_classes:
        raise DataError(
            f"{where}: labels in [{lo}, {hi}], but the model predicts {num_classes} classes; labels must "
            f"be in [0, {num_classes - 1}]. Fix the dataset's labels or the model's num_classes."
        )


def labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, ArrayDataset):
        return dataset.labels
    return torch.as_tensor([int(as_indexed(dataset)[i]["labels"]) for i in range(len(dataset))])


def check_dataset(data: Dataset, where: str) -> None:
    """What the CLI's loaders check, for data given in Python, before any compute: not empty, finite
    float inputs, integer class ids (a float label that is not whole would be truncated silently).
    Names the first bad row."""
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"{where} is empty; give it at least one example.")
    inputs = data.inputs if isinstance(data, ArrayDataset) else None  # its labels were checked when it was made
    rows = range(0) if inputs is not None else range(n)
    if inputs is not None and inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        row = int(torch.nonzero(~torch.isfinite(inputs.reshape(n, -1)))[0, 0])
        raise DataError(f"{where}: row {row}'s inputs hold NaN or inf values; clean or impute them before training.")
    indexed = as_indexed(data)
    for i in rows:
        item = indexed[i]
        x, y = torch.as_tensor(item["inputs"]), torch.as_tensor(item["labels"])
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{where}: row {i}'s inputs hold NaN or inf values; clean or impute them before training.")
        if y.numel() != 1:
            raise DataError(f"{where}: row {i}'s label has shape {tuple(y.shape)}; give one integer class id per row.")
        if y.is_floating_point() and not (bool(torch.isfinite(y)) and float(y) == round(float(y))):
            raise DataError(f"{where}: row {i}'s label is {float(y)!r}; labels must be integer class ids 0..C-1 "
                            "(a fractional label would be truncated). Map them to ids first.")
