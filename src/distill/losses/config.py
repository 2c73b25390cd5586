"""The loss schemas, beside the losses they configure: the divergence settings shared by every job
(`kd` sections: `divergence`, `temperature`, `ratio`, `jsd_beta`, `skew` mean the same everywhere),
and the terms of a method, each with the function that computes it.

The term registry is `TERMS`: a new term is one class here (its `kind`, its settings, its `value`),
listed there; the config schema, the CLI and `Method` accept it from then on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from distill.core.config import Scalar, Schedule, Strict, positive_scalar, unit_scalar
from distill.core.errors import ModelError
from distill.losses.divergences import Kind, token_divergence
from distill.losses.terms import (
    Outputs,
    attention_map_loss,
    attention_transfer,
    contrastive_kd,
    cross_entropy,
    dkd,
    hint_loss,
    rkd_angle,
    rkd_distance,
    scheduled,
)
from distill.models.taps import make_adapter

RATIO = "Share of the loss given to the divergence to the teacher, in [0, 1]; the rest goes to CE on the labels."


class _Divergence(Strict):
    """How the student's distribution is compared with the teacher's (`distill.losses.divergences`)."""

    divergence: Kind = Field("forward_kl", description="forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl "
                             "or tvd.")
    jsd_beta: float = Field(0.5, ge=0, le=1, description="jsd: the interpolation β (0: forward KL, 1: reverse).")
    skew: float = Field(0.1, ge=0, lt=1, description="skew_kl / skew_reverse_kl: the mixing weight α.")


class KDTune(Strict):
    """A short proxy sweep choosing the temperature and ratio on the validation split (`distill.recipes.classify.tune`)."""

    trials: int = Field(6, ge=2, description="Proxy trainings (Optuna TPE over T in [1, 8], ratio in [0, 1]).")
    epochs: float = Field(0.25, gt=0, le=1, description="Share of train.epochs each proxy trains for.")


class KDConfig(_Divergence):
    """Soft-target distillation (Hinton et al. 2015): ratio·T²·D(teacher_T ‖ student_T) + (1 − ratio)·CE.
    Temperature and ratio left out (null) are the recipe's choice (`distill.recipes.classify.plan`), or
    the tuner's with `tune`."""

    tune: KDTune | None = Field(None, description="Choose the temperature and ratio on the validation split by a "
                                "short sweep (soft_targets recipe; needs optuna).")
    temperature: Scalar | None = Field(None, description="Softening temperature T > 0; null: the recipe's.")
    ratio: Scalar | None = Field(None, description=RATIO + " Null: the recipe's.")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Scalar | None) -> Scalar | None:
        return v if v is None else positive_scalar(v, "the temperature")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: Scalar | None) -> Scalar | None:
        return v if v is None else unit_scalar(v, "ratio")

    @model_validator(mode="after")
    def _tune_chooses_both(self) -> KDConfig:
        if self.tune is not None and (self.temperature is not None or self.ratio is not None):
            raise ValueError("kd.tune chooses the temperature and ratio: remove kd.temperature / kd.ratio, or "
                             "kd.tune")
        return self


class TokenKDConfig(_Divergence):
    """Token-level distillation of a language model: ratio · T² · D(teacher_T ‖ student_T) + (1 − ratio) ·
    next-token CE, over the loss-masked tokens.

    The default ratio 0.5 is the measured winner (benchmarks/llm_quality.py): pure forward KL (ratio 1)
    left the student closer to the teacher but with a worse held-out perplexity than plain CE."""

    ratio: float = Field(0.5, ge=0, le=1, description=RATIO)
    temperature: float = Field(1.0, gt=0, description="Both distributions are softened by it before the "
                               "divergence (1: as the models give them).")
    chunk_tokens: int = Field(4096, ge=1, description="Logits are computed this many tokens at a time.")
    warm_start: int = Field(0, ge=0, description="First steps with next-token CE only, before the divergence "
                            "starts: the supervised start MiniLLM and GKD give reverse KL and JSD.")
    cross: Literal["uld", "matched", "matched_uld"] = Field("matched", description=(
        "A student with another tokenizer, at positions where both have read the same text: matched (KL over "
        "the tokens both vocabularies spell alike; the measured winner, benchmarks/cross_tokenizer.py), uld "
        "(sorted probabilities, no vocabulary map), or their sum. Same-tokenizer students use `divergence`."))


class _Term(Strict):
    weight: Scalar = Field(1.0, description="Multiplier of this term in the sum (may be a schedule).")

    def adapter(self, where: str, s: Outputs, t: Outputs) -> nn.Module | None:
        """What maps the student's side to the teacher's (trained with the student), checked on one dry
        forward of each model; None when the term needs none."""
        return None

    def value(self, s: Outputs, t: Outputs | None, targets: torch.Tensor, progress: float,
              adapter: nn.Module | None) -> torch.Tensor:
        raise NotImplementedError


class CETerm(_Term):
    """Cross-entropy on the labels."""

    kind: Literal["ce"]

    def value(self, s, t, targets, progress, adapter):
        return cross_entropy(s.logits, targets)


class _Logits(_Term):
    def adapter(self, where: str, s: Outputs, t: Outputs) -> nn.Module | None:
        if s.logits.shape[-1] != t.logits.shape[-1]:
            raise ModelError(f"{where}: the student predicts {s.logits.shape[-1]} classes and the teacher "
                             f"{t.logits.shape[-1]}; logit distillation needs the same label space.")
        return None


class KDTerm(_Logits, _Divergence):
    """Soft targets (Hinton et al. 2015): T²·D(teacher_T ‖ student_T), D forward KL unless told."""

    kind: Literal["kd"]
    temperature: Scalar = 4.0

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Scalar) -> Scalar:
        return positive_scalar(v, "the temperature")

    def value(self, s, t, targets, progress, adapter):
        temperature = scheduled(self.temperature, progress)
        d = token_divergence(s.logits, teacher_logits=t.logits, kind=self.divergence, temperature=temperature,
                             jsd_beta=self.jsd_beta, skew=self.skew)
        return d * temperature**2  # T²: gradients of comparable size at every temperature


class DKDTerm(_Logits):
    """Decoupled KD (Zhao et al. 2022): tckd_weight·TCKD + nckd_weight·NCKD (the paper's α and β)."""

    kind: Literal["dkd"]
    tckd_weight: float = Field(1.0, ge=0, description="Weight of the target-class part (the paper's α).")
    nckd_weight: float = Field(8.0, ge=0, description="Weight of the non-target-class part (the paper's β).")
    temperature: float = Field(4.0, gt=0)

    def value(self, s, t, targets, progress, adapter):
        hard = targets.argmax(1) if targets.dim() == 2 else targets  # mixup gives class probabilities
        if targets.dim() == 2:
            hard = torch.where(targets.sum(1) > 0, hard, -1)  # an all-zero row: unlabelled
        return dkd(s.logits, t.logits, hard, tckd_weight=self.tckd_weight, nckd_weight=self.nckd_weight,
                   temperature=self.temperature)


class _Pair(_Term):
    student: str | None = Field(None, description="Student module path; omitted: the logits.")
    teacher: str | None = Field(None, description="Teacher module path; omitted: the logits.")


class HintTerm(_Pair):
    """FitNets hint (Romero et al. 2015): a learned adapter maps student features to the teacher's."""

    kind: Literal["hint"]
    loss: Literal["mse", "cosine"] = "mse"

    def adapter(self, where, s, t):
        return make_adapter(tuple(s.read(self.student).shape), tuple(t.read(self.teacher).shape), where)

    def value(self, s, t, targets, progress, adapter):
        return hint_loss(adapter(s.read(self.student)), t.read(self.teacher), self.loss)


class AttentionTransferTerm(_Pair):
    """Attention transfer (Zagoruyko & Komodakis 2017) between (B, C, H, W) feature maps."""

    kind: Literal["attention_transfer"]
    p: float = Field(2.0, gt=0)

    def adapter(self, where, s, t):
        shape_s, shape_t = s.read(self.student).shape, t.read(self.teacher).shape
        if len(shape_s) != 4 or len(shape_t) != 4 or shape_s[2:] != shape_t[2:]:
            raise ModelError(f"{where}: attention transfer compares (B, C, H, W) maps of the same H×W; got "
                             f"student {tuple(shape_s)} and teacher {tuple(shape_t)}. Tap layers at the same "
                             "resolution (channel counts may differ).")
        return None

    def value(self, s, t, targets, progress, adapter):
        return attention_transfer(s.read(self.student), t.read(self.teacher), self.p)


class RKDTerm(_Pair):
    """Relational KD (Park et al. 2019): distance and angle structure of a batch of embeddings."""

    kind: Literal["rkd"]
    distance: float = Field(1.0, ge=0, description="Weight of the distance loss inside the term.")
    angle: float = Field(2.0, ge=0, description="Weight of the angle loss inside the term.")

    def value(self, s, t, targets, progress, adapter):
        fs, ft = s.read(self.student), t.read(self.teacher)
        return self.distance * rkd_distance(fs, ft) + self.angle * rkd_angle(fs, ft)


class ContrastiveTerm(_Pair):
    """Contrastive representation distillation with in-batch negatives (CRD-style InfoNCE)."""

    kind: Literal["contrastive"]
    temperature: float = Field(0.1, gt=0)

    def adapter(self, where, s, t):
        width_s, width_t = s.read(self.student)[0].numel(), t.read(self.teacher)[0].numel()
        return nn.Linear(width_s, width_t, bias=False) if width_s != width_t else nn.Identity()

    def value(self, s, t, targets, progress, adapter):
        return contrastive_kd(adapter(s.read(self.student).flatten(1)), t.read(self.teacher), self.temperature)


class AttentionMapTerm(_Term):
    """Transformer attention maps (TinyBERT: MSE; MiniLM: KL), student layer i ↔ teacher layer j."""

    kind: Literal["attention_maps"]
    layers: list[tuple[int, int]] = Field(..., min_length=1, description="[[student_layer, teacher_layer], ...]")
    loss: Literal["kl", "mse"] = "kl"

    def adapter(self, where, s, t):
        for a, b in self.layers:
            if s.attentions[a].shape[-1] != t.attentions[b].shape[-1]:
                raise ModelError(f"{where}: student layer {a} and teacher layer {b} attend over different "
                                 "lengths; feed both models the same tokenization.")
        return None

    def value(self, s, t, targets, progress, adapter):
        pairs = [attention_map_loss(s.attentions[a], t.attentions[b], self.loss) for a, b in self.layers]
        return torch.stack(pairs).mean()


# The registry of terms, keyed by their `kind`.
TERMS = (CETerm, KDTerm, DKDTerm, HintTerm, AttentionTransferTerm, RKDTerm, ContrastiveTerm, AttentionMapTerm)
Term = Annotated[Union[TERMS], Field(discriminator="kind")]  # type: ignore[valid-type]


def check_term_weights(terms: list[Any]) -> None:
    """Weights must be finite and ≥ 0, and not all 0 (a sum of nothing learns nothing)."""
    fixed = [(i, float(t.weight)) for i, t in enumerate(terms) if not isinstance(t.weight, Schedule)]
    for i, w in fixed:
        if not (w >= 0 and w != float("inf")):
            raise ValueError(f"losses[{i}].weight must be a finite number ≥ 0 (got {w})")
    if terms and len(fixed) == len(terms) and not any(w > 0 for _, w in fixed):
        raise ValueError("losses: every term has weight 0, so nothing would be learned; give one term a "
                         "positive weight")


def needs_live_teacher(term: Any) -> bool:
    """Whether a term reads teacher layers or attention maps (not only the teacher's logits)."""
    return isinstance(term, AttentionMapTerm) or getattr(term, "teacher", None) is not None
