"""Batch augmentation in plain torch: random shifts, horizontal flips, mixup.

For consistent teaching (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient
and consistent") the augmented batch is shown to both teacher and student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from distill.core.config import Strict


def augment_batch(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return augmented inputs and targets (class ids, or (B, C) probabilities under mixup); a setting
    left open (None) is off."""
    if (cfg.shift or 0) > 0 and inputs.dim() == 4:
        inputs = random_shift(inputs, cfg.shift, generator)  # type: ignore[arg-type]
    if cfg.flip and inputs.dim() == 4:
        flip = torch.rand(len(inputs), generator=generator) < 0.5
        inputs = torch.where(flip.to(inputs.device)[:, None, None, None], inputs.flip(-1), inputs)
    if (cfg.mixup or 0) > 0:
        return mixup(inputs, labels, num_classes, cfg.mixup, generator)  # type: ignore[arg-type]
    return inputs, labels


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image (B, C, H, W) by up to `max_shift` pixels, zero-filled."""
    b, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).to(x.device)
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def mixup(x: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner; targets become the mixed one-hot distributions."""
    gamma = torch.distributions.Gamma(torch.tensor([alpha, alpha]), torch.tensor([1.0, 1.0]))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g1, g2 = gamma.sample()
    lam = float(g1 / (g1 + g2))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    onehot = labels if labels.dim() == 2 else one_hot(labels, num_classes)
    return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rows for class ids; an unlabelled example (-1) gets a row of zeros."""
    return F.one_hot(labels.clamp_min(0), num_classes).float() * (labels >= 0).unsqueeze(1)


class AugmentConfig(Strict):
    """Each setting left out (None) is the recipe's to choose (off for plain training); a value given,
    0 included, is used as it is."""

    shift: int | None = Field(None, ge=0, description="Random translation by up to this many pixels; 0: off.")
    flip: bool | None = Field(None, description="Random horizontal flips.")
    mixup: float | None = Field(None, ge=0, description="Beta(a, a) parameter; 0: off.")

    @property
    def enabled(self) -> bool:
        return (self.shift or 0) > 0 or bool(self.flip) or (self.mixup or 0) > 0

    def filled(self, **choices: float | bool) -> AugmentConfig:
        """Every open setting made concrete: the value in `choices`, else off; given ones kept."""
        off = {"shift": 0, "flip": False, "mixup": 0.0}
        return AugmentConfig(**{k: v if (v := getattr(self, k)) is not None else choices.get(k, off[k])
                                for k in off})

    def describe(self) -> str:
        """E.g. "shift 1 px, mixup Beta(0.2, 0.2)", or "none"."""
        parts = ([f"shift {self.shift} px"] if self.shift else []) + (["flips"] if self.flip else []) + \
            ([f"mixup Beta({self.mixup:g}, {self.mixup:g})"] if self.mixup else [])
        return ", ".join(parts) or "none"
