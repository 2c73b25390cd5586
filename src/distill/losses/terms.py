"""The loss functions themselves, pure: cross-entropy, soft targets, features, relations, attention maps,
DKD; what a model's forward produced for them (`Outputs`); and the loss-scale guard.

Their settings and the registry of terms are `distill.losses.config`; a weighted sum of terms is
`distill.losses.methods.Method`, of which `KD` and `CE` are presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from distill.core.config import Schedule
from distill.losses.divergences import token_divergence


@dataclass
class Outputs:
    """What one forward pass of a model produced for a method: logits, tapped layers, attention maps."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)

    def read(self, path: str | None) -> torch.Tensor:
        return self.logits if path is None else self.features[path]


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class ids (B,) or class probabilities (B, C), over labelled examples.

    Unlabelled examples (class id `UNLABELED` = -1, or an all-zero probability row) add nothing; a
    batch with none labelled gives 0. Probability rows are weighted by their mass, so an example mixed
    with an unlabelled partner counts for its own share.
    """
    logits = student_logits.float()
    if targets.dim() == 1:  # no branch on the values: a host sync per step on a GPU
        total = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
        return total / (targets >= 0).sum().clamp_min(1)
    per_example = -(targets.float() * logits.log_softmax(1)).sum(1)
    return per_example.sum() / targets.float().sum().clamp_min(1e-6)


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (Hinton et al. 2015, §2).

    Args:
        student_logits: (B, C) student logits.
        teacher_logits: (B, C) teacher logits.
        temperature: T > 0; the T² factor keeps gradient magnitudes comparable across T.
    """
    return token_divergence(student_logits, teacher_logits=teacher_logits, kind="forward_kl",
                            temperature=temperature) * temperature**2


# --------------------------------------------------------------------------- features and relations


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """FitNets hint (Romero et al. 2015): match an intermediate representation.

    `mse`: mean((s − t)²). `cosine`: mean over positions of 1 − cos(s, t) along the feature dim
    (dim 1 for (B, C, H, W) maps, the last dim otherwise). Shapes must already agree (see
    `distill.models.taps.make_adapter`).
    """
    s, t = student_features.float(), teacher_features.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=1 if s.dim() == 4 else -1, eps=1e-8)).mean()
    raise ValueError(f"hint loss kind {kind!r}: use 'mse' or 'cosine'")


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map: mean over channels of |f|^p, flattened, L2-normalised."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)  # (B, H·W)


def attention_transfer(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): mean squared difference of the normalised
    spatial attention maps; channel counts may differ, spatial sizes must match."""
    return (attention_map(student_features, p) - attention_map(teacher_features, p)).pow(2).mean()


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)  # (B, B)
    mean = d[d > 0].mean() if (d > 0).any() else d.new_tensor(1.0)
    return d / mean  # scale-free: normalised by the mean distance (Park et al.)


def rkd_distance(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """RKD distance (Park et al. 2019): Huber loss between the mean-normalised pairwise distance
    matrices of student and teacher embeddings (B, D) and (B, D'); widths may differ."""
    s, t = student_embeddings.float().flatten(1), teacher_embeddings.float().flatten(1)
    with torch.no_grad():
        target = _pairwise_distances(t)
    return F.smooth_l1_loss(_pairwise_distances(s), target)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, D): unit e_i − e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of the angle at j, every triple


def rkd_angle(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """RKD angle (Park et al. 2019): Huber loss between the cosines of the angles that every
    triplet of embeddings forms, student vs teacher."""
    s, t = student_embeddings.float().flatten(1), teacher_embeddings.float().flatten(1)
    with torch.no_grad():
        target = _angles(t)
    return F.smooth_l1_loss(_angles(s), target)


def contrastive_kd(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor,
                   temperature: float = 0.1) -> torch.Tensor:
    """Contrastive representation distillation (Tian et al. 2020, CRD) with in-batch negatives.

    InfoNCE: each student embedding must pick its own teacher embedding among the batch's,
    −mean_i log softmax_j(cos(s_i, t_j) / τ)[i]. CRD draws negatives from a memory bank of the
    whole dataset; here they are the other examples of the batch (as in CLIP-style objectives), so
    nothing is kept between steps. Widths must agree (map the student through an adapter first).
    """
    s = F.normalize(student_embeddings.float().flatten(1), dim=1)
    t = F.normalize(teacher_embeddings.float().flatten(1), dim=1)
    logits = s @ t.T / temperature  # (B, B): row i scores student i against every teacher row
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))


def attention_map_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                       kind: str = "kl") -> torch.Tensor:
    """Transformer self-attention distillation between maps (B, H, L, L) of one layer each.

    `kl` (MiniLM, Wang et al. 2020): KL(teacher row ‖ student row) summed over keys, averaged over
    batch, heads and queries. `mse` (TinyBERT, Jiao et al. 2020): mean squared difference.
    When the head counts differ, both sides are first averaged over heads (one map per layer).
    """
    s, t = student_attention.float(), teacher_attention.float()
    if s.shape[-2:] != t.shape[-2:]:
        raise ValueError(f"attention maps over different sequence lengths: {tuple(s.shape)} vs {tuple(t.shape)}")
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "kl":
        return (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean()
    raise ValueError(f"attention map loss kind {kind!r}: use 'kl' or 'mse'")


def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
        tckd_weight: float = 1.0, nckd_weight: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022): α·TCKD + β·NCKD (α = tckd_weight, β = nckd_weight), both × T², batch mean.

    TCKD: KL between teacher and student binary distributions [p(target), 1 − p(target)].
    NCKD: KL between their distributions over the non-target classes (target masked out).
    Classic KD is TCKD + (1 − p_t(target))·NCKD; DKD frees the NCKD weight from p_t(target).
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    targets = torch.where(targets >= 0, targets, t.argmax(1))  # unlabelled: the teacher's class
    gt = F.one_hot(targets, s.shape[1]).bool()  # (B, C)
    p_s, p_t = s.softmax(1), t.softmax(1)
    b_s = torch.stack([p_s[gt], 1 - p_s[gt]], 1).clamp_min(1e-12)  # (B, 2)
    b_t = torch.stack([p_t[gt], 1 - p_t[gt]], 1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean()
    masked = torch.finfo(torch.float32).min
    log_q_s = s.masked_fill(gt, masked).log_softmax(1)
    log_q_t = t.masked_fill(gt, masked).log_softmax(1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(gt, 0).sum(1).mean()
    return (tckd_weight * tckd + nckd_weight * nckd) * temperature**2


def _turn(key: str, way: str) -> str:
    """"lower KEY" / "raise KEY"; a key written "-KEY" is a weight that falls as KEY rises (CE's 1 − ratio)."""
    if key.startswith("-"):
        return f"{'raise' if way == 'lower' else 'lower'} {key[1:]}"
    return f"{way} {key}"


def term_scales(sums: dict[str, float], weights: dict[str, tuple[float, str]], steps: int,
                ratio: float = 100.0) -> list[str]:
    """Warnings for terms whose weighted mean magnitude over the first `steps` steps dwarfs another's by
    more than `ratio` (one term then decides the gradient alone), each naming the weight to change."""
    scale = {k: abs(sums[k]) / steps * w for k, (w, _) in weights.items() if k in sums and w > 0}
    if len(scale) < 2:
        return []
    big = max(scale, key=scale.__getitem__)
    notes = []
    for small, value in scale.items():
        if small != big and scale[big] > ratio * max(value, 1e-12):
            factor = scale[big] / max(value, 1e-12)
            fixes = dict.fromkeys([_turn(weights[big][1], "lower"), _turn(weights[small][1], "raise")])
            notes.append(f"loss scale: `{big}` is {factor:,.0f}× larger than `{small}` over the first {steps} "
                         f"steps (weighted means {scale[big]:.3g} vs {value:.3g}), so `{small}` barely "
                         f"teaches; {' or '.join(fixes)} to bring them within {ratio:.0f}×.")
    return notes


def scheduled(value: float | Schedule, progress: float) -> float:
    """A constant, or a schedule evaluated at training progress in [0, 1]."""
    if not isinstance(value, Schedule):
        return float(value)
    x = min(1.0, progress / value.until)
    if value.kind == "linear":
        w = x
    else:
        w = 0.5 * (1 - math.cos(math.pi * x))
    return value.start + (value.end - value.start) * w
