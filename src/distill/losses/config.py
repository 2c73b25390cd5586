"""TODO docstring."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from distill.core.config import Scalar, Schedule, Strict, positive_scalar, unit_scalar


class KDTune(Strict):
    """A short proxy sweep choosing T and α on the validation split (`distill.recipes.classify.tune`)."""

    trials: int = Field(6, ge=2, description="Proxy trainings (Optuna TPE over T in [1, 8], α in [0, 1]).")
    epochs: float = Field(0.25, gt=0, le=1, description="Share of train.epochs each proxy trains for.")


class KDConfig(Strict):
    """Soft-target distillation (Hinton et al. 2015): α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE.
    Left out (null), each is the recipe's choice (`distill.recipes.classify.plan`), or the tuner's with `tune`."""

    tune: KDTune | None = Field(None, description="Choose T and α on the validation split by a short sweep "
                                "(soft_targets recipe; needs optuna).")

    temperature: Scalar | None = Field(None, description="Softening temperature T > 0; null: the recipe's.")
    alpha: Scalar | None = Field(None, description="Share of the loss given to the teacher, in [0, 1]; null: "
                                 "the recipe's.")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Scalar | None) -> Scalar | None:
        return v if v is None else positive_scalar(v, "the temperature")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: Scalar | None) -> Scalar | None:
        return v if v is None else unit_scalar(v, "alpha")

    @model_validator(mode="after")
    def _tune_chooses_both(self) -> KDConfig:
        if self.tune is not None and (self.temperature is not None or self.alpha is not None):
            raise ValueError("kd.tune chooses the temperature and alpha: remove kd.temperature / kd.alpha, or "
                             "kd.tune")
        return self


class _Term(Strict):
    weight: Scalar = Field(1.0, description="Multiplier of this term in the sum (may be a schedule).")


class CETerm(_Term):
    """Cross-entropy on the labels."""

    kind: Literal["ce"]


class KDTerm(_Term):
    """Soft targets (Hinton et al. 2015): T²·KL(teacher_T ‖ student_T)."""

    kind: Literal["kd"]
    temperature: Scalar = 4.0

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Scalar) -> Scalar:
        return positive_scalar(v, "the temperature")


class DKDTerm(_Term):
    """Decoupled KD (Zhao et al. 2022): α·TCKD + β·NCKD."""

    kind: Literal["dkd"]
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)


class _Pair(_Term):
    student: str | None = Field(None, description="Student module path; omitted: the logits.")
    teacher: str | None = Field(None, description="Teacher module path; omitted: the logits.")


class HintTerm(_Pair):
    """FitNets hint (Romero et al. 2015): a learned adapter maps student features to the teacher's."""

    kind: Literal["hint"]
    loss: Literal["mse", "cosine"] = "mse"


class AttentionTransferTerm(_Pair):
    """Attention transfer (Zagoruyko & Komodakis 2017) between (B, C, H, W) feature maps."""

    kind: Literal["attention_transfer"]
    p: float = Field(2.0, gt=0)


class RKDTerm(_Pair):
    """Relational KD (Park et al. 2019): distance and angle structure of a batch of embeddings."""

    kind: Literal["rkd"]
    distance: float = Field(1.0, ge=0, description="Weight of the distance loss inside the term.")
    angle: float = Field(2.0, ge=0, description="Weight of the angle loss inside the term.")


class ContrastiveTerm(_Pair):
    """Contrastive representation distillation with in-batch negatives (CRD-style InfoNCE)."""

    kind: Literal["contrastive"]
    temperature: float = Field(0.1, gt=0)


class AttentionMapTerm(_Term):
    """Transformer attention maps (TinyBERT: MSE; MiniLM: KL), student layer i ↔ teacher layer j."""

    kind: Literal["attention_maps"]
    layers: list[tuple[int, int]] = Field(..., min_length=1, description="[[student_layer, teacher_layer], ...]")
    loss: Literal["kl", "mse"] = "kl"


Term = Annotated[Union[CETerm, KDTerm, DKDTerm, HintTerm, AttentionTransferTerm, RKDTerm, ContrastiveTerm,
                       AttentionMapTerm], Field(discriminator="kind")]


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
