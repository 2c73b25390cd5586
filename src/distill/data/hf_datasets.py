"""Labelled texts from Hugging Face `datasets`: a dataset saved with `save_to_disk`, a data file
(`.csv`, `.json`/`.jsonl`, `.parquet`) read by `load_dataset`, or a hub id; `distill.run(...,
dataset=ds)` saves an in-memory `Dataset`/`DatasetDict` and reads it back here.

Splits come from the dataset's own `train` / `validation` (or `val`, `dev`) / `test` when it has
them; the ones it lacks are cut from `train` by `data.val_fraction` / `data.test_fraction`. A
`ClassLabel` column gives its class names.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from distill.core.errors import DataError, did_you_mean
from distill.data.config import DataConfig

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "dev", "valid"), "test": ("test",)}
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_hf_parts(cfg: DataConfig) -> tuple[dict[str, tuple[list[str], list[str]]], list[str] | None]:
    """({"train": (texts, labels), "val": ..., "test": ...} for the splits the dataset has, the class
    names in the dataset's own id order when its label column is a ClassLabel). A split whose labels
    are all -1 (an unlabelled test split, as GLUE's) is left out and cut from train instead."""
    dataset = open_dataset(str(cfg.path))
    parts, order = {}, None
    for part, names in SPLIT_NAMES.items():
        found = next((n for n in names if n in dataset), None)
        if found is None:
            continue
        read = _texts_and_labels(dataset[found], cfg, f"{cfg.path} [{found}]")
        if read is not None:
            (texts, labels), names_in_order = read
            parts[part], order = (texts, labels), order or names_in_order
    if "train" not in parts:
        raise DataError(f"`data.path`: {cfg.path} has splits {list(dataset)}, none named train (or it is "
                        "unlabelled); rename one to `train` (a DatasetDict) or give a single-split dataset.")
    return parts, order


def open_dataset(source: str) -> Any:
    """A DatasetDict from a saved dataset directory, a data file or a hub id."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.name=hf needs the `datasets` package: pip install datasets") from None
    path = Path(source)
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json",
                                                             "state.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"`data.path`: {path} is not a file `datasets` reads ({', '.join(BUILDERS)}).")
        loaded = datasets.load_dataset(builder, data_files={"train": str(path)})
    elif path.exists():
        raise DataError(f"`data.path`: {path} is a directory but not a saved dataset (no dataset_dict.json "
                        "or state.json); save it with Dataset.save_to_disk, or point at a data file.")
    else:
        try:  # a hub id (needs the network or the HF cache)
            loaded = datasets.load_dataset(source)
        except Exception as exc:  # datasets raises many types for a missing or unreachable dataset
            raise DataError(f"`data.path`: {source} is neither a file, a saved dataset directory nor a dataset "
                            f"`datasets` can load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from None
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)


def _texts_and_labels(split: Any, cfg: DataConfig, where: str
                      ) -> tuple[tuple[list[str], list[str]], list[str] | None] | None:
    columns = list(split.column_names)
    label = (columns[cfg.label_column] if isinstance(cfg.label_column, int)
             and -len(columns) <= cfg.label_column < len(columns) else str(cfg.label_column))
    for key, column in (("data.text_column", cfg.text_column), ("data.label_column", label)):
        if column not in columns:
            raise DataError(f"`{key}`: {where} has no column `{column}`.{did_you_mean(str(column), columns)} "
                            f"Its columns: {columns}.")
    feature = split.features[label]
    names = getattr(feature, "names", None)  # a ClassLabel: ids with names
    if names is not None and len(split) and all(v == -1 for v in split[label]):
        return None  # an unlabelled split
    texts, labels = [], []
    for i, (text, value) in enumerate(zip(split[cfg.text_column], split[label])):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}, row {i}, column `{cfg.text_column}`: the text is empty or not a string.")
        if value is None or (names is not None and not 0 <= value < len(names)) or str(value).strip() == "":
            raise DataError(f"{where}, row {i}, column `{label}`: the label is missing ({value!r}).")
        texts.append(text.strip())
        labels.append(names[value] if names is not None else str(value).strip())
    return (texts, labels), names


def save_dataset(dataset: Any, root: Path) -> Path:
    """Save an in-memory `Dataset`/`DatasetDict` under `root/<its name>-<fingerprint>` (once) and
    return the path; the name is the dataset's own (`info.dataset_name`), else `dataset`."""
    import datasets

    if not isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        raise DataError(f"dataset= takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}.")
    named = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [("train", dataset)]
    fingerprint = hashlib.sha256(" ".join(f"{k}={v._fingerprint}" for k, v in named).encode()).hexdigest()
    first = next(iter(named))[1]
    label = re.sub(r"[^\w.-]+", "_", getattr(first.info, "dataset_name", None) or "dataset")
    target = root / f"{label}-{fingerprint[:16]}"
    if not target.is_dir():  # saved under a temporary name, then renamed: an interrupted save is never reused
        partial = root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            dataset.save_to_disk(str(partial))
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target
