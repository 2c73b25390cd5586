"""Recipes: how the distilled student is taught (teacher signal, augmentation, objective), and the
candidates `recipe: auto` measures before choosing one (`distill.recipes.classify.pilot`).

- **plain**: cross-entropy on the labels, no teacher: the baseline every candidate must beat.
- **soft_targets** (Hinton et al. 2015): ratio·KD + (1 − ratio)·CE on the inputs as they are, the
  teacher's logits cached once unless something needs it live.
- **function_matching** (Beyer et al. 2022, "a good teacher is patient and consistent"): the live
  teacher scores exactly the view the student sees (random shifts, mixup between inputs) and the
  student matches it with pure KD at T = 1, so the teacher's dark knowledge is not limited to the
  (memorised) training examples. Needs float inputs.

`auto` does not pick by rule: the pilot trains every candidate briefly and the best on validation
wins. Rules only say which candidates make sense: token ids cannot be shifted or mixed, so text gets
no function matching; shifts apply to (C, H, W) inputs, scaled to the shorter side
(`SHIFT_FRACTION`: 2 pixels on 28×28, where they were measured; 1 on 8×8); mixup strength is itself a
candidate. A setting the user gave (`kd.temperature`, `train.augment.shift: 0`, ...) is used in
every candidate as given, never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from distill.core.errors import ConfigError
from distill.data.augment import AugmentConfig
from distill.losses.config import KDConfig
from distill.losses.methods import CE, KD, Method

SHIFT_FRACTION = 1 / 14  # of the shorter image side: 2 pixels on 28×28, 1 on 8×8 (rounded)
MIXUP_CANDIDATES = (1.0, 0.2)  # Beta(a, a): 1.0 mixes uniformly (Beyer et al.), 0.2 mildly
SOFT_TARGET_CANDIDATES = ((2.0, 0.5), (4.0, 0.9))  # (temperature, ratio)
KD_DEFAULTS = {"function_matching": (1.0, 1.0), "soft_targets": (2.0, 0.5)}  # (temperature, ratio)


@dataclass(frozen=True)
class Candidate:
    """One way to train the student: its objective, augmentation and teacher signal."""

    name: str  # as the pilot table shows it, e.g. "soft targets T=2 ratio=0.5"
    recipe: str  # plain | soft_targets | function_matching | given
    objective: Method
    augment: AugmentConfig  # concrete (no open settings)
    signal: str = "cached"  # live | cached (plain: unused)

    @property
    def taught(self) -> bool:
        """Whether the teacher takes part (a "given" CE method does not)."""
        return self.recipe != "plain" and self.objective.needs_teacher

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "recipe": self.recipe, "objective": self.objective.describe(),
                "augment": self.augment.model_dump(), "signal": self.signal}


@dataclass(frozen=True)
class Plan:
    """What a run's students are taught with, and why (shown in the report and `Result.plan`)."""

    distilled: Candidate
    baseline: Candidate  # the plain student's settings: the best plain candidate of the pilot
    why: str
    pilot: dict[str, Any] | None = None  # the pilot's table (`pilot.Pilot.to_dict`), when it ran
    notes: list[str] = field(default_factory=list)

    # the distilled student's settings, by the names the pipeline and reports use
    @property
    def recipe(self) -> str:
        return self.distilled.recipe

    @property
    def signal(self) -> str:
        return self.distilled.signal

    @property
    def augment(self) -> AugmentConfig:
        return self.distilled.augment

    @property
    def objective(self) -> Method:
        return self.distilled.objective

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "name": self.distilled.name, "why": self.why, "signal": self.signal,
                "augment": self.augment.model_dump(), "objective": self.objective.describe(),
                "baseline": self.baseline.describe(), "pilot": self.pilot, "notes": list(self.notes)}


def shift_for(input_shape: tuple[int, ...]) -> int:
    """The shift function matching uses on inputs of `input_shape`: a fraction of the shorter side
    of (C, H, W) inputs, 0 on anything else."""
    if len(input_shape) != 3:
        return 0
    return int(SHIFT_FRACTION * min(input_shape[1:]) + 0.5)


def candidates(modality: str, input_shape: tuple[int, ...], *, kd: KDConfig, augment: AugmentConfig,
               live_ok: bool = True, extra: list[Candidate] | None = None) -> list[Candidate]:
    """What `auto` measures on data of `modality`: plain CE, soft targets, function matching where the
    inputs can be shifted or mixed and the teacher can run live (`live_ok`), then the user's `extra`."""
    out = [Candidate("plain", "plain", CE(), augment.filled())]
    fm_ok = live_ok and modality != "text"
    if fm_ok and modality == "images":  # the plain student with the augmentation function matching uses
        out.append(Candidate("plain + shifts, mixup", "plain", CE(),
                             augment.filled(shift=shift_for(input_shape), mixup=MIXUP_CANDIDATES[1])))
    settings = {(kd.temperature if kd.temperature is not None else t, kd.ratio if kd.ratio is not None else r)
                for t, r in SOFT_TARGET_CANDIDATES}
    for t, r in sorted(settings):
        out.append(Candidate(f"soft targets T={t:g} ratio={r:g}", "soft_targets", _kd(kd, t, r),
                             augment.filled(), "cached" if not augment.enabled else "live"))
    if fm_ok:
        shift = shift_for(input_shape) if modality in ("images", "audio") else 0
        for a in dict.fromkeys(MIXUP_CANDIDATES if augment.mixup is None else (augment.mixup,)):
            aug = augment.filled(shift=shift, mixup=a)
            out.append(Candidate(f"function matching ({aug.describe()})", "function_matching",
                                 kd_objective(kd, "function_matching"), aug, "live"))
    names = [c.name for c in out]
    for c in extra or []:
        if c.name in names:
            raise ConfigError(f"pilot.candidates: the name {c.name!r} is taken; give the candidate another name.")
        names.append(c.name)
        out.append(c)
    return out


def kd_objective(kd: KDConfig, recipe: str = "soft_targets") -> Method:
    """KD with the kd section's settings, its temperature and ratio defaulting to the recipe's."""
    t, r = KD_DEFAULTS[recipe]
    return _kd(kd, t if kd.temperature is None else kd.temperature, r if kd.ratio is None else kd.ratio)


def _kd(kd: KDConfig, temperature: Any, ratio: Any) -> KD:
    return KD(temperature, ratio, kd.divergence, jsd_beta=kd.jsd_beta, skew=kd.skew)


def chosen(recipe: str, signal: str, augment: AugmentConfig, modality: str, input_shape: tuple[int, ...], *,
           method: Method | None = None, kd: KDConfig | None = None, live_needed: bool = False) -> Candidate:
    """The distilled student's settings for a recipe named in the config (or a method given), no pilot."""
    kd = kd or KDConfig()
    if recipe == "function_matching":
        if modality == "text":
            raise ConfigError("recipe: function_matching mixes inputs, and these are token ids (integers), "
                              "which cannot be mixed: choose recipe: soft_targets.")
        if signal == "cached":
            raise ConfigError("recipe: function_matching shows the teacher each augmented, mixed view, which "
                              "a logit cache cannot do: use the live teacher (signal live or auto).")
        shift = shift_for(input_shape) if modality in ("images", "audio") else 0
        aug = augment.filled(shift=shift, mixup=MIXUP_CANDIDATES[0])
        return Candidate(f"function matching ({aug.describe()})", "function_matching",
                         method or kd_objective(kd, "function_matching"), aug, "live")
    aug = augment.filled()
    if signal == "auto":
        signal = "live" if aug.enabled or live_needed else "cached"
    name = "given method" if method is not None else "soft targets"
    return Candidate(name, "soft_targets", method or kd_objective(kd), aug, signal)


def plain_candidate(augment: AugmentConfig) -> Candidate:
    """The plain student with the augmentation the user gave (nothing else added)."""
    return Candidate("plain", "plain", CE(), augment.filled())


def with_signal(candidate: Candidate, signal: str, live_needed: bool = False) -> Candidate:
    """`candidate` with the signal a config fixes (`teacher.signal` live or cached) where it has a choice."""
    if candidate.recipe in ("plain", "function_matching") or signal == "auto":
        if live_needed and candidate.taught:
            return replace(candidate, signal="live")
        return candidate
    return replace(candidate, signal=signal)
