"""The transfer set: inputs without labels that the teacher scores, so the student learns from far more
examples than were labelled (Hinton et al. 2015, §3; the distillation stage of SimCLRv2).

`data.unlabeled` (a file) and `data.label_fraction` (the rest of a labelled split) give such inputs in a
run config; `distill.distill(..., unlabeled=...)` in Python. The student trains on labelled ∪
unlabelled: the teacher's soft targets on every example, the labels' cross-entropy on the labelled
ones only (an unlabelled example carries the label `UNLABELED`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.arrays import (
    UNLABELED,
    ArrayDataset,
    IndexedDataset,
    as_indexed,
    check_compatible,
    concat_arrays,
)


def with_transfer_set(labelled: Dataset, unlabeled: Dataset | None) -> Dataset:
    """Labelled ∪ unlabelled as one training set (unlabelled rows carry `UNLABELED`)."""
    if unlabeled is None or len(unlabeled) == 0:  # type: ignore[arg-type]
        return labelled
    check_compatible(labelled, unlabeled, "unlabeled")
    if isinstance(labelled, ArrayDataset) and isinstance(unlabeled, ArrayDataset):
        return concat_arrays(labelled, unlabeled)
    return _Union(as_indexed(labelled), as_indexed(unlabeled))


def as_unlabeled(data: Any) -> Dataset:
    """Unlabelled inputs given in Python: a tensor / array (N, ...), or a Dataset (or DataLoader) whose
    items are inputs, `(inputs, label)` pairs or dicts with `inputs` (labels, if any, are dropped:
    these examples are taught by the teacher alone)."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(data)
        return ArrayDataset(x, torch.full((len(x),), UNLABELED))
    return _Unlabeled(data)


class _Unlabeled(IndexedDataset):
    """Any dataset's inputs (bare tensors, pairs or dicts), served as unlabelled examples."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        inputs = item if isinstance(item, torch.Tensor) else super().__getitem__(i)["inputs"]
        return {"inputs": inputs, "labels": UNLABELED, "index": i}


class _Union(Dataset):
    """Rows of `first`, then of `second`, indexed 0..N-1 across both (the teacher cache's index)."""

    def __init__(self, first: Dataset, second: Dataset):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.first)  # type: ignore[arg-type]
        item = self.first[i] if i < n else self.second[i - n]
        return {**item, "index": i}
