"""Reading unlabelled inputs from a user's file, before they are prepared like a dataset's own inputs:
an array file (.npy, or .npz with an `inputs` array), a text file (one example per line) or a JSONL file
of `{"text": ...}` rows (texts that hold line breaks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import DataError

ARRAY_SUFFIXES = (".npy", ".npz")
TEXT_SUFFIXES = (".txt", ".jsonl")


def read_raw(path: Path, key: str) -> Any:
    """The raw inputs of `path`: a numeric array (N, ...) or a list of texts; `key` names the setting."""
    if not path.exists():
        raise DataError(f"`{key}`: {path} does not exist. Give an array file (.npy / .npz) or, for text "
                        "data, a .txt file with one example per line.")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        texts = _jsonl_texts(path, key) if suffix == ".jsonl" else \
            [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise DataError(f"`{key}`: {path} holds no text (one example per line, or JSONL rows with `text`).")
        return texts
    if suffix not in ARRAY_SUFFIXES:
        raise DataError(f"`{key}`: {path} is a {suffix or 'suffix-less'} file; give .npy, .npz (with an "
                        "`inputs` array), .txt (one text per line) or .jsonl (rows with `text`).")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"`{key}`: {path} cannot be read as a NumPy array ({exc}).") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        if "inputs" not in names and len(names) != 1:
            raise DataError(f"`{key}`: {path} holds arrays {names}; name the inputs `inputs`.")
        loaded = loaded["inputs" if "inputs" in names else names[0]]
    if loaded.dtype.kind not in "biuf" or loaded.ndim < 1 or len(loaded) == 0:
        raise DataError(f"`{key}`: {path} must hold a non-empty numeric array (N, ...), not "
                        f"{loaded.dtype} of shape {loaded.shape}.")
    if loaded.dtype.kind == "f" and not np.isfinite(loaded).all():
        raise DataError(f"`{key}`: {path} holds NaN or inf values; clean them first.")
    return loaded


def _jsonl_texts(path: Path, key: str) -> list[str]:
    """The `text` of every row of a JSONL file; a row without a string `text` is named."""
    from distill.data.corpora import json_objects

    texts = []
    for n, row in json_objects(path):
        if not isinstance(row.get("text"), str):
            raise DataError(f"`{key}`: {path}, line {n}: each row needs a string `text` (the example); this row "
                            f"has keys {sorted(row)}.")
        texts.append(row["text"])
    return texts
