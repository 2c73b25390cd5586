"""Several teachers as one: combine the members' predictions into a single teaching signal.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network", §1, §3) distil an ensemble
into one model. An `Ensemble` is a frozen classifier whose logits (B, C) are the combined
prediction of its members, so every teacher signal (`LiveTeacher`, `CachedTeacher`), the KD loss,
`predict` and the benchmarks use it exactly like a single teacher. Members may be different
architectures, or one architecture loaded from several checkpoints (seeds, last epochs of a run).

Every mode is a weighted geometric mean of the members' distributions p_k = softmax(z_k):

    log q_b = log_softmax( Σ_k w_bk · log p_bk ),    Σ_k w_bk = 1

and modes differ only in the weights w (B, K).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from distill.core.checkpoint import load_weights
from distill.core.errors import ConfigError, ModelError, did_you_mean
from distill.models.config import ModelConfig
from distill.models.zoo import build_model, freeze, logits_of

MODES = ("mean", "weighted", "confidence", "correctness")


def combine(member_logits: torch.Tensor, mode: str, weights: Sequence[float] | None = None,
            targets: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Teaching logits (B, C) from the members' logits (B, K, C): normalised log-probabilities.

    Averaging in log space (a normalised geometric mean) rather than averaging probabilities as
    Hinton et al. did keeps temperature clean: softmax(log q / T) is then exactly the normalised
    geometric mean of the members' softened distributions softmax(z_k / T), so the KD loss may
    soften the combined logits as it would any teacher's. With averaged probabilities, softening
    log(mean p) is not the average of the softened members.

    Args:
        member_logits: (B, K, C) logits of K members on the same batch.
        mode: `mean`, `weighted`, `confidence` or `correctness` (see `member_weights`).
        weights: K fixed, non-negative weights (`weighted` only); normalised to sum to 1.
        targets: class ids (B,) or class probabilities (B, C), e.g. from mixup (`correctness`).
        temperature: τ > 0 of the `confidence` weighting; lower trusts the surest member more.
    """
    if member_logits.dim() != 3:
        raise ModelError("combine expects member logits (B, K, C), got shape "
                         f"{tuple(member_logits.shape)}.")
    log_p = member_logits.float().log_softmax(-1)  # (B, K, C)
    w = member_weights(log_p, mode, weights, targets, temperature)  # (B, K)
    return (w.unsqueeze(-1) * log_p).sum(1).log_softmax(-1)  # (B, C)


def member_weights(log_probs: torch.Tensor, mode: str, weights: Sequence[float] | None = None,
                   targets: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample member weights w (B, K), each row summing to 1.

    - `mean`: w_bk = 1/K.
    - `weighted`: w_bk = a_k / Σ_j a_j for fixed a (config key `teacher.weights`).
    - `confidence`: w_b = softmax_k(−H(p_bk) / τ), H the entropy: a teacher sure of an example
      counts more on it (cf. Kwon et al. 2020, "Adaptive knowledge distillation based on entropy").
    - `correctness`: w_bk ∝ p_bk(y_b), each member's probability of the true class (for soft
      targets q_b, Σ_c q_bc p_bkc): teachers right about an example count more on it (cf.
      Zhang et al. 2022, CA-MKD, which weights teachers by their loss on the labels). Without
      targets (e.g. a teacher signal that sees inputs only) it falls back to `mean`.

    Args:
        log_probs: (B, K, C) members' log-probabilities.
    """
    b, k, _ = log_probs.shape
    check_mode(mode, weights, k, temperature)
    if mode == "mean" or (mode == "correctness" and targets is None):
        return log_probs.new_full((b, k), 1.0 / k)
    if mode == "weighted":
        return normalised_weights(weights, k).to(log_probs.device).expand(b, k)
    if mode == "confidence":
        neg_entropy = (log_probs.exp() * log_probs).nan_to_num().sum(-1)  # (B, K): −H; 0·log 0 = 0
        return (neg_entropy / temperature).softmax(-1)
    # p_k(y) / Σ_j p_j(y), normalised in log space: never 0/0, even when every member is wrong
    return _true_class_log_prob(log_probs, targets).softmax(-1)


def _true_class_log_prob(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p_bk(y_b) (B, K) for class ids (B,) or log Σ_c q_bc p_bkc for probabilities (B, C)."""
    if targets.dim() == 1:
        index = targets.long().to(log_probs.device).view(-1, 1, 1).expand(-1, log_probs.shape[1], 1)
        return log_probs.gather(-1, index).squeeze(-1)
    log_q = targets.float().to(log_probs.device).log().unsqueeze(1)  # (B, 1, C); log 0 = −inf: fine
    return (log_q + log_probs).logsumexp(-1)


def check_mode(mode: str, weights: Sequence[float] | None, k: int,
               temperature: float = 1.0) -> None:
    """Fail before any compute on an unknown mode, a bad temperature, or bad weights."""
    if mode not in MODES:
        raise ConfigError(f"`teacher.combine`: unknown mode `{mode}`.{did_you_mean(mode, MODES)} "
                          f"Use one of {list(MODES)}.")
    if not temperature > 0:
        raise ConfigError("`teacher.temperature` (confidence weighting) must be > 0, got "
                          f"{temperature}.")
    if mode == "weighted":
        normalised_weights(weights, k)
    elif weights is not None:
        raise ConfigError(f"`teacher.weights` is only used with teacher.combine=weighted (here "
                          f"`{mode}`); remove it or set teacher.combine=weighted.")


def check_member_count(k: int) -> None:
    if k < 2:
        raise ConfigError(f"`teacher.members`: an ensemble needs at least 2 members, got {k}; "
                          "for one teacher set teacher.arch/teacher.checkpoint instead.")


def normalised_weights(weights: Sequence[float] | None, k: int) -> torch.Tensor:
    """The fixed weights (K,) divided by their sum, after checking there is one per member."""
    if weights is None:
        raise ConfigError("`teacher.weights`: teacher.combine=weighted needs one weight per "
                          f"member ({k} here).")
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float32)
    if len(w) != k:
        raise ConfigError(f"`teacher.weights` has {len(w)} values but the ensemble has {k} "
                          "members; give one weight per entry of teacher.members.")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ConfigError("`teacher.weights` must be finite and non-negative, got "
                          f"{list(weights)}.")
    if w.sum() == 0:
        raise ConfigError("`teacher.weights` are all zero; give at least one member a positive "
                          "weight.")
    return w / w.sum()


class Ensemble(nn.Module):
    """Frozen members (any architectures) whose combined prediction is one teacher's logits (B, C).

    The constructor freezes the members (eval mode, no gradients): an ensemble teaches, it is
    never trained. Build one from configs and checkpoints with `build_ensemble`.
    """

    def __init__(self, members: Sequence[nn.Module], mode: str = "mean",
                 weights: Sequence[float] | None = None, temperature: float = 1.0,
                 names: Sequence[str] | None = None):
        super().__init__()
        check_member_count(len(members))
        check_mode(mode, weights, len(members), temperature)
        self.members = nn.ModuleList(members)
        self.mode, self.weights, self.temperature = mode, weights, temperature
        self.names = list(names) if names else [type(m).__name__ for m in members]
        # How members are combined, as a tensor in the state dict: a teacher cache keyed on the
        # weights (`distill.teachers.signals.fingerprint`) must not serve `mean` logits to `confidence`.
        how = [MODES.index(mode), temperature, *(weights or [])]
        self.register_buffer("combine_spec", torch.tensor(how, dtype=torch.float64))
        freeze(self)

    @property
    def uses_targets(self) -> bool:
        """Whether `forward` wants the batch's targets (mode `correctness`); signals check it."""
        return self.mode == "correctness"

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's logits on `x`, stacked: (B, K, C)."""
        outputs = [logits_of(m(x)).float() for m in self.members]  # K × (B, C)
        counts = [o.shape[-1] for o in outputs]
        if len(set(counts)) > 1:
            raise ModelError(_mismatch(self.names, counts))
        return torch.stack(outputs, dim=1)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return combine(self.member_logits(x), self.mode, self.weights, targets, self.temperature)


@torch.no_grad()
def check_class_counts(members: Sequence[nn.Module], sample: torch.Tensor,
                       names: Sequence[str] | None = None) -> int:
    """One dry forward of each member on `sample` (eval mode, then restored).

    Returns:
        The class count the members share; raises ModelError naming each member's otherwise.
    """
    check_member_count(len(members))
    counts = []
    for m in members:
        was_training = m.training
        m.eval()
        counts.append(logits_of(m(sample)).shape[-1])
        m.train(was_training)
    if len(set(counts)) > 1:
        raise ModelError(_mismatch(names or [type(m).__name__ for m in members], counts))
    return counts[0]


def _mismatch(names: Sequence[str], counts: Sequence[int]) -> str:
    each = ", ".join(f"teacher.members[{i}] ({n}) predicts {c}"
                     for i, (n, c) in enumerate(zip(names, counts)))
    return (f"Ensemble members disagree on the number of classes: {each}. Every member must "
            "predict the same classes in the same order; fix the odd member's num_classes (its "
            "kwargs) or its checkpoint.")


def build_ensemble(specs: list[ModelConfig], input_shape: tuple[int, ...], num_classes: int,
                   mode: str = "mean", weights: Sequence[float] | None = None,
                   temperature: float = 1.0) -> Ensemble:
    """Build every member, load its trained weights, check they agree on the classes, freeze.

    Specs may repeat one arch with several checkpoints (an ensemble of seeds or of epochs).
    Everything that can be checked without compute (count, checkpoints given, mode, weights) is
    checked before any member is built.
    """
    check_member_count(len(specs))
    check_mode(mode, weights, len(specs), temperature)
    for i, spec in enumerate(specs):
        if spec.checkpoint is None:
            raise ConfigError(f"`teacher.members[{i}].checkpoint`: an ensemble member must be a "
                              "trained model; train it first (e.g. `distill train-teacher`) and "
                              "give its weights file.")
    members = []
    for spec in specs:
        model = build_model(spec, input_shape, num_classes)
        load_weights(Path(spec.checkpoint), model)  # type: ignore[arg-type]
        members.append(model)
    names = [spec.arch for spec in specs]
    found = check_class_counts(members, torch.zeros(2, *input_shape), names)
    if found != num_classes:
        raise ModelError(f"The ensemble members predict {found} classes but the data has "
                         f"{num_classes}; train the members on this dataset's classes.")
    return Ensemble(members, mode, weights, temperature, names)
