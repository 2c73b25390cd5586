"""Batches of a dataset over given indices: in-memory datasets are sliced, others collated (text padded)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from distill.data.arrays import ArrayDataset, as_indexed


def iter_batches(dataset: Dataset, indices: torch.Tensor, batch_size: int):
    """Yield dict batches over `indices`; in-memory datasets are sliced, not collated item by item."""
    if isinstance(dataset, ArrayDataset):
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            yield {"inputs": dataset.inputs[idx], "labels": dataset.labels[idx], "index": idx}
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(as_indexed(dataset), indices.tolist()),
                                         batch_size=batch_size, collate_fn=collate_rows)
    for batch in loader:
        yield batch


def collate_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default collation, except that text rows ((2, L) integer [ids; mask]) of different
    lengths are padded to the longest with id 0 under mask 0, as a tokenizer's dynamic padding does."""
    xs = [r["inputs"] for r in rows]
    if (all(isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] == 2 and not x.is_floating_point()
            for x in xs) and len({x.shape[1] for x in xs}) > 1):
        width = max(x.shape[1] for x in xs)
        rows = [{**r, "inputs": torch.nn.functional.pad(r["inputs"], (0, width - r["inputs"].shape[1]))}
                for r in rows]
    return torch.utils.data.default_collate(rows)
