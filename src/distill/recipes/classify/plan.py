"""Recipes: how the distilled student is taught (teacher signal, augmentation, objective), chosen from
the config and the data where the config leaves them open (`recipe: auto`, `teacher.signal: auto`,
`kd.temperature` / `kd.ratio` left out).

- **function_matching** (Beyer et al. 2022, "a good teacher is patient and consistent"): the live
  teacher scores exactly the view the student sees (random shifts, mixup between inputs), and the
  student matches it with pure KD at T = 1. Each epoch the teacher labels new inputs, so its dark
  knowledge is not limited to the (memorised) training examples. Needs float inputs.
- **soft_targets** (Hinton et al. 2015): ratio·KD + (1 − ratio)·CE on the inputs as they are, the teacher's
  logits cached once unless something needs it live.

`auto` picks soft targets except on images where function matching has measured to pay: token ids and feature rows cannot be shifted, and on spectrograms (spoken digits) shifts
+ mixup cost the small student far more than the teacher gave back. On images it picks function
matching when there is a transfer set, or when the teacher is near one-hot on its own training images
(mean top-1 probability above ONE_HOT_CONFIDENCE, measured on up to CONFIDENCE_SAMPLE of them): then
only new views carry dark knowledge (MNIST-5k: function matching won, its teacher at 99%). Where the
teacher's targets are already soft (Fashion-MNIST with every label, its teacher at 93%), the
small student learns more from them on the clean images than from shifted, mixed views (kd_wins:
fmnist_full). Both use the transfer set (`data.unlabeled`, `data.label_fraction`) when there is
one. The plain baseline gets the same augmentation, so a win is the teacher's and not the
augmentation's. What each recipe measured is in BENCHMARKS.md (kd_wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distill.core.errors import ConfigError
from distill.data.augment import AugmentConfig
from distill.eval.doctor import ONE_HOT_CONFIDENCE
from distill.losses.config import KDConfig, needs_live_teacher
from distill.losses.methods import KD, Method
from distill.recipes.classify.config import RunConfig

FUNCTION_MATCHING_SHIFT = 2  # pixels (or spectrogram bins)
FUNCTION_MATCHING_MIXUP = 1.0  # Beta(1, 1): mixing weights uniform in [0, 1]
CONFIDENCE_SAMPLE = 4096  # training examples the teacher scores to measure it (the first ones)
KD_DEFAULTS = {"function_matching": (1.0, 1.0), "soft_targets": (2.0, 0.5)}  # (temperature, ratio)


@dataclass(frozen=True)
class Plan:
    """What a run's distilled student is taught with, and why (shown in the report)."""

    recipe: str  # function_matching | soft_targets
    signal: str  # live | cached
    augment: AugmentConfig  # for the distilled and the plain student alike
    objective: Method
    why: str


def plan(cfg: RunConfig, modality: str, input_shape: tuple[int, ...], *, transfer_set: bool = False,
         confidence: Callable[[], float] | None = None) -> Plan:
    """The recipe of `cfg` for data of `modality` (`data.modality_of`) whose examples have
    `input_shape`, resolved to concrete settings. `confidence` measures the teacher's mean top-1
    probability on its training examples; it is called only when `auto` needs it (images, a live
    signal, no transfer set); without it such a plan is provisional (function matching)."""
    live_needed = cfg.teacher.combine == "correctness" or any(needs_live_teacher(t) for t in cfg.losses)
    signal = "cached" if cfg.teacher.out_of_fold is not None else cfg.teacher.signal  # fixed targets per example
    return resolve(cfg.recipe, signal, cfg.train.augment, modality, input_shape,
                   method=Method(cfg.losses) if cfg.losses else None, kd=cfg.kd, live_needed=live_needed, transfer_set=transfer_set, confidence=confidence)


def resolve(recipe: str, signal: str, augment: AugmentConfig, modality: str, input_shape: tuple[int, ...],
            *, method: Method | None = None, kd: KDConfig | None = None, live_needed: bool = False, transfer_set: bool = False,
            confidence: Callable[[], float] | None = None) -> Plan:
    """A recipe name (`auto` included) and a signal (`auto` included) made concrete for the data
    (`plan` says what `transfer_set` and `confidence` change)."""
    chosen, why = _choose(recipe, signal, modality)
    if chosen == "function_matching" and recipe == "auto" and transfer_set:
        why = "function matching (auto: images and a transfer set; the teacher scores shifted, mixed views of both)"
    elif chosen == "function_matching" and recipe == "auto" and confidence is not None:
        chosen, why = _by_confidence(confidence())
    if chosen == "function_matching":
        augment = augment.model_copy(update={
            "shift": augment.shift or (FUNCTION_MATCHING_SHIFT if len(input_shape) == 3 else 0),
            "mixup": augment.mixup or FUNCTION_MATCHING_MIXUP})
    objective = method if method is not None else kd_objective(kd or KDConfig(), chosen)
    if signal == "auto":
        signal = "live" if chosen == "function_matching" or augment.enabled or live_needed else "cached"
    return Plan(chosen, signal, augment, objective, why)


def kd_objective(kd: KDConfig, recipe: str = "soft_targets") -> Method:
    """KD with the kd section's settings, its temperature and ratio defaulting to the recipe's."""
    t, r = KD_DEFAULTS[recipe]
    return KD(t if kd.temperature is None else kd.temperature, r if kd.ratio is None else kd.ratio, kd.divergence,
              jsd_beta=kd.jsd_beta, skew=kd.skew)


def _by_confidence(confidence: float) -> tuple[str, str]:
    """Auto's choice on images without a transfer set, from the teacher's confidence on its training images."""
    if confidence > ONE_HOT_CONFIDENCE:
        return "function_matching", (f"function matching (auto: the teacher is near one-hot on its training "
                                     f"images, mean top-1 {100 * confidence:.1f}%; shifted, mixed views carry "
                                     "the dark knowledge those lack)")
    return "soft_targets", (f"soft targets (auto: the teacher's targets on its training images are already soft, "
                            f"mean top-1 {100 * confidence:.1f}%; on such data shifts + mixup cost the small "
                            "student more than they teach, BENCHMARKS.md kd_wins fmnist_full)")


def _choose(recipe: str, signal: str, modality: str) -> tuple[str, str]:
    if recipe == "function_matching":
        if modality == "text":
            raise ConfigError("recipe: function_matching mixes inputs, and these are token ids (integers), "
                              "which cannot be mixed: choose recipe: soft_targets.")
        if signal == "cached":
            raise ConfigError("recipe: function_matching shows the teacher each augmented, mixed view, which "
                              "a logit cache cannot do: use the live teacher (signal live or auto).")
        return "function_matching", "function matching (chosen in the config)"
    if recipe == "soft_targets":
        return "soft_targets", "soft targets (chosen in the config)"
    if modality != "images":
        return "soft_targets", f"soft targets (auto: {AUTO_REASON.get(modality, modality + ' inputs')})"
    if signal == "cached":
        return "soft_targets", "soft targets (auto: the teacher signal is cached; function matching needs it live)"
    return "function_matching", "function matching (auto: images can be shifted and mixed, and new views teach)"


AUTO_REASON = {
    "text": "token inputs cannot be shifted or mixed",
    "audio": "on spectrograms, shifts + mixup cost the small student far more than the teacher gave back "
             "(BENCHMARKS.md, kd_wins)",
    "features": "feature rows have no shift to apply",
}
