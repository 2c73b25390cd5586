"""What every report's pictures share: matplotlib off-screen, PNGs written atomically, and image
inputs drawn small, so a report shows the examples it names (the largest teacher–student
disagreements of an image dataset) instead of row numbers.

    row["thumbnail"] = thumbnail(x)                       # a (C, H, W) model input → 0–255 ints
    disagreements_figure(run_dir, rows, classes)          # plots/disagreements.png, or None
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from distill.core.files import atomic_write_bytes

MAX_SIDE = 48  # pixels: enough to read a digit or a garment, small enough for report.json


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    import io
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def thumbnail(x: torch.Tensor, max_side: int = MAX_SIDE) -> list[Any] | None:
    """An image input (C, H, W) or (H, W) as rows of 0–255 ints ((H, W), or (H, W, 3) in colour), its
    longer side averaged down to at most `max_side` and its range stretched to full contrast (model
    inputs are standardised, not pixels). None for anything that is not an image."""
    x = x.detach().float().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or min(x.shape[1:]) < 2:
        return None
    x = x if x.shape[0] == 3 else x[:1]  # a spectrogram or other stack: its first channel
    step = math.ceil(max(x.shape[1:]) / max_side)
    if step > 1:
        x = torch.nn.functional.avg_pool2d(x[None], step, ceil_mode=True)[0]
    lo, hi = x.min(), x.max()
    x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    return x[0].tolist() if x.shape[0] == 1 else x.permute(1, 2, 0).tolist()


def disagreements_figure(run_dir: Path, rows: list[dict[str, Any]], classes: list[str]) -> Path | None:
    """The disagreements that carry a thumbnail, numbered as the report's table numbers them, each
    titled with its label and both predictions; None when none has one (text, features)."""
    import numpy as np

    shown = [r for r in rows if r.get("thumbnail")]
    if not shown:
        return None
    plt = pyplot()
    cols = min(5, len(shown))
    fig, axes = plt.subplots(math.ceil(len(shown) / cols), cols, figsize=(2.2 * cols, 2.6 * math.ceil(len(shown) / cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, r) in enumerate(zip(axes.flat, shown), 1):
        pixels = np.asarray(r["thumbnail"], dtype=np.uint8)
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"{k}. row {r['index']}, label {_name(classes, r['label'])}\nteacher "
                     f"{_name(classes, r['teacher_prediction'])}, student {_name(classes, r['student_prediction'])}",
                     fontsize=7)
    return save_figure(fig, Path(run_dir) / "plots" / "disagreements.png")


def _name(classes: list[str], i: int) -> str:
    return classes[i] if 0 <= i < len(classes) else str(i)
