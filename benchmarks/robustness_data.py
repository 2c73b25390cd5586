"""Data and models for `defaults_robustness.py`: settings the recipes were never tuned on.

- **digits8**: scikit-learn's 8×8 digits (1,000 train / 297 validation / 500 test, as a user reported).
- **letters32**: the 26 capital letters rendered at 32×32 (15 to 20 pixels tall) in the typefaces
  matplotlib ships (DejaVu, STIX, Computer Modern; regular, bold, italic), each with a random size,
  rotation (±12°), shift (±2 pixels) and noise.
- **breast_cancer**: scikit-learn's Wisconsin breast-cancer rows (30 features, 2 classes).
- **digits_features**: the 8×8 digits as 64 feature columns (no image shape: feature-row recipes).
- **docstrings**: the first paragraph of every docstring in the Python standard library that runs
  this script, labelled by the top-level package it documents (10 packages), as word ids.
- **spoken_commands**: ten command words (yes, no, up, down, left, right, on, off, stop, go) spoken by
  espeak-ng in 16 voices, 3 speeds and 2 pitches with background noise, as log-mel spectrograms; split
  by voice (10 to train, 2 to validate, 4 to test). Needs Debian's espeak-ng.
- **python_source** (an LM corpus): the top-level modules of the Python standard library that runs
  this script, one document per file.
- **python_docs** (an LM corpus): the prose of Python's own reference topics (`pydoc_data.topics`, the
  text `help("with")` prints), one document per topic.

Everything is built from files installed with Python, NumPy, scikit-learn and matplotlib: no download.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.data.arrays import ArrayDataset


@dataclass
class Data:
    train: ArrayDataset  # labelled
    val: ArrayDataset
    test: ArrayDataset
    unlabeled: torch.Tensor | None  # inputs without labels (the rest of the training split)


def split(x: torch.Tensor, y: torch.Tensor, n_train: int, n_val: int, label_fraction: float = 1.0,
          seed: int = 0) -> Data:
    """A seeded random split into train / val / test (the rest); with `label_fraction` < 1, labels are kept
    on a stratified share of train and val, the rest of train becomes unlabelled inputs."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    unlabeled = None
    if label_fraction < 1:
        keep_tr, keep_va = _stratified(y[tr], label_fraction, g), _stratified(y[va], label_fraction, g)
        unlabeled = x[tr[~keep_tr]]
        tr, va = tr[keep_tr], va[keep_va]
    return Data(ArrayDataset(x[tr], y[tr]), ArrayDataset(x[va], y[va]), ArrayDataset(x[te], y[te]), unlabeled)


def _stratified(y: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        keep[idx[:max(1, round(fraction * len(idx)))]] = True
    return keep


# --------------------------------------------------------------------------- images


def digits8() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.3) / 0.4, torch.tensor(d.target)


def letters32(per_class: int = 170, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Capital letters drawn in matplotlib's own typefaces with random size, rotation and position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    fonts = sorted(str(p) for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")
                   if not re.search(r"(Siz|NonUni|LastResort|cmex|cmsy|cmmi|Display)", p.name))
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(1, 1), dpi=size)
    canvas = fig.canvas
    xs, ys = [], []
    for label, letter in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        for _ in range(per_class):
            fig.clf()
            font = font_manager.FontProperties(fname=fonts[rng.integers(len(fonts))])
            fig.text(0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06), letter, fontproperties=font,
                     fontsize=rng.uniform(34, 46), rotation=rng.uniform(-12, 12), ha="center", va="center")
            canvas.draw()
            image = np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
            image = 1.0 - image + rng.normal(0, 0.05, image.shape).astype(np.float32)
            xs.append(image[:size, :size])
            ys.append(label)
    plt.close(fig)
    x = torch.tensor(np.stack(xs)).unsqueeze(1)
    return (x - x.mean()) / x.std(), torch.tensor(ys)


class CNN(nn.Module):
    """A small VGG-style teacher for C×H×W images."""

    def __init__(self, channels: int, side: int, classes: int, widths: tuple[int, int] = (32, 64)):
        super().__init__()
        a, b = widths
        self.features = nn.Sequential(
            nn.Conv2d(channels, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(b * (side // 4) ** 2, 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(inputs: int, hidden: list[int], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(inputs, h), nn.ReLU()]
        inputs = h
    return nn.Sequential(*layers, nn.Linear(inputs, classes))


class Unsure(nn.Module):
    """A teacher whose logits are divided by `factor`: as accurate, far less confident (the outputs of a
    model trained with label smoothing or heavy mixup)."""

    def __init__(self, model: nn.Module, factor: float):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.factor


# --------------------------------------------------------------------------- feature rows


def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(d.target)


def digits_features() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits8()
    return x.flatten(1), y


# --------------------------------------------------------------------------- text

PACKAGES = ["asyncio", "email", "xml", "unittest", "http", "multiprocessing", "concurrent", "importlib",
            "json", "logging", "tkinter", "idlelib", "ctypes", "sqlite3", "urllib", "encodings", "lib2to3",
            "distutils"]
TEXT_CLASSES = 10  # the packages with the most docstrings, of those above
MAX_WORDS, VOCAB = 48, 6000


def docstrings() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 2, MAX_WORDS) word-id rows [ids; mask] and labels: each docstring's first paragraph, labelled
    by its stdlib package; the vocabulary is the words of all of them (ids by frequency, 1 = unknown)."""
    root = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    texts: dict[str, list[str]] = {p: [] for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            if "test" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                    doc = ast.get_docstring(node)
                    if doc:
                        first = doc.strip().split("\n\n")[0]
                        if len(first.split()) >= 4:
                            texts[package].append(first)
    chosen = sorted(texts, key=lambda p: -len(texts[p]))[:TEXT_CLASSES]
    rows = [(t, i) for i, p in enumerate(chosen) for t in dict.fromkeys(texts[p])]
    words = [re.findall(r"[a-z]+|\d+|[^\sa-z\d]", t.lower())[:MAX_WORDS] for t, _ in rows]
    vocab = {w: i + 2 for i, (w, _) in enumerate(Counter(w for ws in words for w in ws).most_common(VOCAB - 2))}
    ids = torch.zeros(len(rows), 2, MAX_WORDS, dtype=torch.long)
    for n, ws in enumerate(words):
        ids[n, 0, :len(ws)] = torch.tensor([vocab.get(w, 1) for w in ws])
        ids[n, 1, :len(ws)] = 1
    return ids, torch.tensor([i for _, i in rows]), chosen


class TextTeacher(nn.Module):
    """Word embeddings, a 2-layer Transformer encoder and mean pooling over the mask."""

    def __init__(self, classes: int, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(MAX_WORDS, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1].bool()
        h = self.encoder(self.embed(ids) + self.position, src_key_padding_mask=~mask)
        return self.head((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1))


class BagOfWords(nn.Module):
    """A student: the mean of its word embeddings under the mask, then a linear layer."""

    def __init__(self, classes: int, dim: int = 24):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1].float()
        return self.head((self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1))


# --------------------------------------------------------------------------- audio

COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def spoken_commands(directory: Path) -> Data:
    """Log-mel (1, 40, 101) clips of the command words, split by voice: no test voice is heard in training."""
    from distill.data import speech

    speech.synthesize(directory, accents=speech.ACCENTS[:4], variants=speech.VARIANTS[:4], words=COMMANDS)
    from safetensors.torch import load_file

    tensors = load_file(str(directory / speech.DATA_FILE))
    x = speech.log_mel(tensors["waves"].float() / 32767).unsqueeze(1)
    y, voices = tensors["labels"], tensors["voices"]
    order = torch.randperm(int(voices.max()) + 1, generator=torch.Generator().manual_seed(0))
    split = {int(v): part for part, vs in (("train", order[:10]), ("val", order[10:12]), ("test", order[12:]))
             for v in vs}
    mask = {part: torch.tensor([split[int(v)] == part for v in voices]) for part in ("train", "val", "test")}
    mean, std = x[mask["train"]].mean(), x[mask["train"]].std()
    x = (x - mean) / std
    return Data(*(ArrayDataset(x[mask[p]], y[mask[p]]) for p in ("train", "val", "test")), None)


class SpectrogramCNN(nn.Module):
    """A teacher for (1, mels, frames) spectrograms: three conv blocks, global pooling, a linear head."""

    def __init__(self, classes: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))



DOC_SEPARATOR = "<|doc|>"  # the LM corpora's document separator line (`data.document_separator`)


def python_source(path: Path) -> Path:
    """The standard library's top-level modules as one text file of documents (one per module)."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return _documents(path, [f.read_text(encoding="utf-8", errors="replace") for f in files])


def python_docs(path: Path) -> Path:
    """Python's reference topics (`pydoc_data.topics`) as one text file of documents (one per topic)."""
    import pydoc_data.topics as topics

    return _documents(path, [text for _, text in sorted(topics.topics.items())])


def _documents(path: Path, texts: list[str]) -> Path:
    kept = [t.strip() for t in texts if len(t.strip()) > 200]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"\n{DOC_SEPARATOR}\n".join(kept), encoding="utf-8")
    return path
