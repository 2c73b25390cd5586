"""What every report's pictures share: matplotlib off-screen, PNGs written atomically, and image
inputs drawn small, so a report shows the examples it names (the largest teacher–student
disagreements of an image dataset) instead of row numbers.

    row["thumbnail"] = thumbnail(x)                       # a (C, H, W) model input → compact 0–255 pixels
    disagreements_figure(run_dir, rows, classes)          # plots/disagreements.png, or None

A thumbnail is stored in report.json as {"shape": [H, W] or [H, W, 3], "pixels": base64 of uint8}, a
kilobyte or two each; torch is imported only when one is made (rendering a report needs none).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

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


def thumbnail(x: Any, max_side: int = MAX_SIDE) -> dict[str, Any] | None:
    """An image input (C, H, W) or (H, W) at most `max_side` pixels a side (each side averaged down
    on its own, so a long spectrogram stays readable), its range stretched to full contrast (model
    inputs are standardised, not pixels): grey, or colour for 3 or 4 channels (alpha dropped); a
    stack of other maps shows its first. None for anything that is not an image."""
    import torch

    x = x.detach().float().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or min(x.shape[1:]) < 2:
        return None
    x = x[:3] if x.shape[0] in (3, 4) else x[:1]
    size = (min(x.shape[1], max_side), min(x.shape[2], max_side))
    if size != tuple(x.shape[1:]):
        x = torch.nn.functional.adaptive_avg_pool2d(x[None], size)[0]
    lo, hi = x.min(), x.max()
    x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).contiguous()
    return {"shape": list(x.shape), "pixels": base64.b64encode(x.numpy().tobytes()).decode("ascii")}


def pixels(small: dict[str, Any]) -> Any:
    """A stored thumbnail as a numpy uint8 array (H, W) or (H, W, 3)."""
    import numpy as np

    return np.frombuffer(base64.b64decode(small["pixels"]), dtype=np.uint8).reshape(small["shape"])


def disagreements_figure(run_dir: Path, rows: list[dict[str, Any]], classes: list[str]) -> Path | None:
    """The disagreements that carry a thumbnail, numbered as the report's table numbers them (the
    row's place in `rows`), each titled with its label and both predictions; None when none has one
    (text, features)."""
    shown = [(k, r) for k, r in enumerate(rows, 1) if r.get("thumbnail")]
    if not shown:
        return None
    plt = pyplot()
    cols = min(5, len(shown))
    fig, axes = plt.subplots(math.ceil(len(shown) / cols), cols, figsize=(2.2 * cols, 2.6 * math.ceil(len(shown) / cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (k, r) in zip(axes.flat, shown):
        image = pixels(r["thumbnail"])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest", aspect="auto")
        ax.set_title(f"{k}. row {r['index']}, label {class_name(classes, r['label'])}\nteacher "
                     f"{class_name(classes, r['teacher_prediction'])}, student {class_name(classes, r['student_prediction'])}",
                     fontsize=7)
    return save_figure(fig, Path(run_dir) / "plots" / "disagreements.png")


def class_name(classes: list[str], i: int) -> str:
    """Class `i` by its name, or its number where the names do not reach it."""
    return classes[i] if 0 <= i < len(classes) else str(i)
