"""Users' arrays and images as labelled splits: a `.npz` file (`inputs`, `labels`, optional
`class_names`) or a folder of images, one sub-folder per class (`<class>/*.png`), with their own
validation and test files or folders (`data.val_path`, `data.test_path`) when given, else
stratified fractions of the training ones.

Images are read with Pillow (a dependency of matplotlib), converted to one mode (`L` when every
training image is grayscale, else `RGB`) and, with `data.image_size: [H, W]`, resized; without it
every image must have the first one's size (the first that differs is named). Pixels are divided
by 255 and standardised with the training split's statistics, like the built-in image datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
import numpy as np
import torch

from distill.core.errors import DataError
from distill.data.arrays import DataSplits, make_splits, stratified_split
from distill.data.config import DataConfig
from distill.data.tables import check_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_user_arrays(cfg: DataConfig) -> DataSplits:
    """`data.name: npz` or `images`: the training file or folder, and the split files given."""
    read: Any = _read_npz if cfg.name == "npz" else _read_image_folder
    train_x, train_y, names = read(Path(cfg.path), cfg, None)  # type: ignore[arg-type]
    parts = {"train": (train_x, train_y)}
    for part, path in (("val", cfg.val_path), ("test", cfg.test_path)):
        if path is not None:
            x, y, _ = read(Path(path), cfg, names, like=train_x)
            if x.dtype != train_x.dtype and np.uint8 in (x.dtype, train_x.dtype):
                raise DataError(f"`data.{part}_path`: {path} holds {x.dtype} inputs, the training data {train_x.dtype}; "
                                "give both in the same units (uint8 pixels are divided by 255).")
            if x.shape[1:] != train_x.shape[1:]:
                raise DataError(f"`data.{part}_path`: {path} holds inputs of shape {x.shape[1:]}, the training "
                                f"data {train_x.shape[1:]}; give the same shape (for images, data.image_size).")
            parts[part] = (x, y)
    scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    xs = [torch.as_tensor(x, dtype=torch.float32) / scale for x, _ in parts.values()]
    ys = [torch.as_tensor(y).long() for _, y in parts.values()]
    x, y = torch.cat(xs), torch.cat(ys)
    offsets = np.cumsum([0] + [len(t) for t in xs])
    ranges = {part: torch.arange(int(a), int(b)) for part, a, b in zip(parts, offsets[:-1], offsets[1:])}
    fractions = (0.0 if "val" in parts else cfg.val_fraction, 0.0 if "test" in parts else cfg.test_fraction)
    train_i, val_i, test_i = (ranges["train"][i] for i in stratified_split(ys[0], fractions, cfg.seed))
    return make_splits(x, y, train_i, ranges.get("val", val_i), ranges.get("test", test_i), names, scale)


def _read_npz(path: Path, cfg: DataConfig, names: list[str] | None, like: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise DataError(f"{path}: data.name=npz reads a .npz file with `inputs` and `labels` arrays.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as a NumPy .npz file ({exc}).") from None
    missing = [k for k in ("inputs", "labels") if k not in arrays]
    if missing:
        raise DataError(f"{path} has arrays {sorted(arrays)}; it needs {missing} (inputs (N, ...) and "
                        "labels (N,), class ids 0..C-1).")
    x, y = arrays["inputs"], arrays["labels"]
    try:
        check_arrays(x, y)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    own = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    if names is not None and own is not None and own != names:
        raise DataError(f"{path}: class_names {own} differ from the training file's {names}; give the same "
                        "names in the same order (labels are ids into them).")
    names = names or own or [str(i) for i in range(int(y.max()) + 1)]
    if int(y.max()) >= len(names):
        raise DataError(f"{path}: labels go up to {int(y.max())} but there are {len(names)} class names.")
    return x, y.astype(np.int64), names


def _read_image_folder(root: Path, cfg: DataConfig, names: list[str] | None, like: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of `root`/<class>/; `like` (the training images) fixes the mode and size of a split's."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root}: data.name=images reads a folder with one sub-folder of images per class.")
    files = [(d.name, p) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
             for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    classes = sorted({c for c, _ in files})  # folders with images (hidden and empty ones are not classes)
    if not files:
        raise DataError(f"{root} has no images in class sub-folders (<class>/*.png, *.jpg, …).")
    names = names or classes
    unknown = sorted(set(classes) - set(names))
    if unknown:
        raise DataError(f"{root} has class folder(s) {unknown} that the training folder lacks ({names}).")
    images = []
    for _, path in files:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path} cannot be read as an image ({exc}); remove or replace it.") from None
    if like is not None:
        mode, size = ("L" if like.shape[1] == 1 else "RGB"), (like.shape[3], like.shape[2])
    else:
        mode = "L" if all(i.mode in ("L", "1", "I;16", "I") for i in images) else "RGB"
        size = tuple(reversed(cfg.image_size)) if cfg.image_size else images[0].size  # PIL sizes are (W, H)
    arrays = []
    for (_, path), image in zip(files, images):
        if cfg.image_size is None and image.size != size:  # a split's too: resized only when asked
            raise DataError(f"{path} is {image.size[0]}×{image.size[1]} pixels, the first image {size[0]}×{size[1]}; "
                            "set data.image_size: [H, W] to resize every image.")
        image = image.convert(mode).resize(size) if image.size != size else image.convert(mode)
        pixels = np.asarray(image, dtype=np.uint8)
        arrays.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))  # (C, H, W)
    labels = np.array([names.index(c) for c, _ in files], dtype=np.int64)
    return np.stack(arrays), labels, names
