"""User arrays and CSV files as splits: shapes, finite values and class ids checked, rows named in errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.errors import DataError
from distill.data.arrays import DataSplits, make_splits, stratified_split
from distill.data.config import DataConfig


def from_arrays(inputs: Any, labels: Any, *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, class_names: list[str] | None = None, scale: float = 1.0) -> DataSplits:
    """Split NumPy arrays or tensors into stratified, deterministic train/val/test sets; inputs are
    divided by `scale` (e.g. 255 for pixels) before they are standardised."""
    x_np, y_np = np.asarray(inputs), np.asarray(labels)
    check_arrays(x_np, y_np)
    x = torch.as_tensor(x_np, dtype=torch.float32) / scale
    y = torch.as_tensor(y_np).long()
    train_i, val_i, test_i = stratified_split(y, (val_fraction, test_fraction), seed)
    return make_splits(x, y, train_i, val_i, test_i, class_names, scale)


def check_arrays(x: np.ndarray, y: np.ndarray) -> None:
    """Numeric inputs (N, ...) and integer class ids (N,), N >= 1; said clearly before torch fails."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"inputs must be numbers (bool, int or float), not {x.dtype}; convert them first, "
                        "e.g. np.asarray(inputs, dtype=np.float32).")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(f"inputs have shape {x.shape} and labels {y.shape}; give one label per input: "
                        "inputs (N, ...) and labels (N,), with N >= 1.")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise DataError(f"inputs hold NaN or inf values (the first at index {where}); clean or impute "
                        "them first.")
    if y.dtype.kind == "f":
        bad = y[~(np.isfinite(y) & (y == np.round(y)))]  # NaN, inf, 0.5
    else:
        bad = y[:0] if y.dtype.kind in "biu" else y
    if len(bad):
        raise DataError(f"labels must be integer class ids 0..C-1, not {y.dtype} values such as {bad[0]!r}; "
                        "map them to ids, e.g. np.unique(labels, return_inverse=True)[1].")


def load_csv(cfg: DataConfig) -> DataSplits:
    path = Path(cfg.path)  # type: ignore[arg-type]
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: cannot parse as numeric CSV with a header row ({exc}).") from None
    names = list(table.dtype.names or [])
    col = cfg.label_column
    label_name = names[col] if isinstance(col, int) and -len(names) <= col < len(names) else col
    if label_name not in names:
        raise DataError(f"data.label_column `{col}` is not a column of {path}; columns: {names}.")
    for name in names:
        bad = np.flatnonzero(np.isnan(np.atleast_1d(table[name])))
        if len(bad):
            raise DataError(f"{path}, line {bad[0] + 2}, column `{name}`: the cell is empty or not a number; "
                            "every cell must be a number.")
    y = csv_labels(np.atleast_1d(table[label_name]), path, label_name)
    x = np.stack([np.atleast_1d(table[n]) for n in names if n != label_name], axis=1)
    return from_arrays(x, y, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)


def csv_labels(y: np.ndarray, path: Path, column: str) -> np.ndarray:
    """Class ids 0..C-1 from a CSV column: a fraction, a negative id or an id beyond the classes that
    occur (a model that wide would train classes with no example) is refused, naming the line."""
    where = f"{path}, column `{column}` (data.label_column)"
    fractional = np.flatnonzero(y != np.round(y))
    if len(fractional):
        i = fractional[0]
        raise DataError(f"{where}, line {i + 2}: label {y[i]:g} is not a whole number; labels are class ids "
                        "0..C-1.")
    ids = y.astype(np.int64)
    present = np.unique(ids)
    if present[0] < 0 or present[-1] >= len(present):
        i = int(np.flatnonzero((ids < 0) | (ids >= len(present)))[0])
        never = sorted(set(range(int(present[-1]) + 1)) - set(present.tolist()))[:5]
        gaps = f" (ids {never} never occur)" if never and ids[i] >= 0 else ""
        raise DataError(f"{where}, line {i + 2}: label {ids[i]} is outside the class ids 0..{len(present) - 1} of "
                        f"the {len(present)} distinct labels{gaps}. Map the labels to 0..C-1, e.g. "
                        "np.unique(labels, return_inverse=True)[1].")
    return ids
