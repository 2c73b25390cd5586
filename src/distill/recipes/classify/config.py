"""The `distill run` job's config: teacher (one, several, or out-of-fold), student, training, the kd
section or a losses list, recipe, bench; loading from YAML with overrides, checked before any compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.core.config import (
    RunHeader,
    Strict,
    builtin_config,
    read_raw,
    read_yaml,
    source_name,
    validate_section,
)
from distill.core.errors import ConfigError
from distill.data.augment import AugmentConfig
from distill.data.config import USER_DATA, DataConfig
from distill.losses.config import KDConfig, Term, check_term_weights, needs_live_teacher
from distill.models.config import FromTeacher, ModelConfig
from distill.training.config import TrainConfig


class StudentConfig(ModelConfig):
    arch: str | None = Field(None, description="Zoo name or `module:Class`; omit with from_teacher.")
    from_teacher: FromTeacher | None = Field(None, description="Build the student from the teacher's layers "
                                            "instead of arch.")

    @model_validator(mode="after")
    def _arch_or_teacher(self) -> StudentConfig:
        if (self.arch is None) == (self.from_teacher is None):
            raise ValueError("give the student either `arch` (a model of its own) or `from_teacher` "
                             "(a copy of the teacher with fewer layers), not both or neither")
        return self


class TeacherConfig(ModelConfig):
    """One teacher (`arch`), or several (`members`) combined into one teaching signal."""

    arch: str | None = Field(None, description="Zoo name or `module:Class`; omit with members.")
    members: list[ModelConfig] = Field(default_factory=list, description="Trained teachers to combine "
                                       "(any architectures, or one arch with several checkpoints).")
    combine: Literal["mean", "weighted", "confidence", "correctness"] = Field(
        "mean", description="mean: average log-probabilities; weighted: fixed `weights`; confidence / "
        "correctness: per-example weights from each member's entropy / probability of the true class.")
    weights: list[float] | None = Field(None, description="One weight per member (combine: weighted).")
    signal: Literal["auto", "live", "cached"] = Field(
        "auto",
        description="live: the teacher runs on every (augmented) batch, i.e. consistent teaching; "
        "cached: its logits on the clean training set are computed once and reused; auto: live when the "
        "recipe, mixup or a layer term needs it, else cached.",
    )
    cache_dir: Path = Field(Path("cache/teacher"), description="Where cached teacher logits go (one folder per "
                            "teacher and data, found again by a later run).")
    cache_rebuild: bool = Field(False, description="Rebuild cache shards that fail their checksum.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Used when no checkpoint is given.")
    out_of_fold: int | None = Field(None, ge=2, description="k: each training example's soft target comes from "
                                    "one of k extra teachers that did not train on it (distill.recipes.classify.out_of_fold); "
                                    "an answer to a teacher near one-hot on its own training examples.")

    @model_validator(mode="after")
    def _one_or_several(self) -> TeacherConfig:
        if (self.arch is None) == (not self.members):
            raise ValueError("give the teacher either `arch` (one model) or `members` (several), not both "
                             "or neither")
        if self.members and self.checkpoint is not None:
            raise ValueError("`checkpoint` belongs to each of teacher.members, not to the teacher section")
        if self.combine == "correctness" and self.signal == "cached":
            raise ValueError("combine: correctness weighs members by the labels of each batch, which a "
                             "logit cache cannot do: set teacher.signal=live")
        if self.out_of_fold is not None and (self.members or self.signal == "live"):
            raise ValueError("teacher.out_of_fold computes each training example's target once, from the fold "
                             "teacher that did not see it: it needs one teacher (`arch`) and a cached signal "
                             "(teacher.signal: auto or cached)")
        if self.weights is not None and self.combine != "weighted":
            raise ValueError(f"teacher.weights are used only with combine: weighted (got {self.combine})")
        return self


class BenchConfig(Strict):
    threads: int = Field(1, ge=1, description="CPU threads for latency/throughput.")
    throughput_batch: int = Field(256, ge=1, description="Batch size at which throughput is measured.")
    repeats: int = Field(50, ge=3, description="Timed calls per latency figure (median and p95 over them).")


class CandidateConfig(Strict):
    """A recipe of the user's for the pilot to measure beside the built-in candidates."""

    name: str = Field(..., min_length=1, description="How the pilot table names it.")
    recipe: Literal["soft_targets", "function_matching", "plain"] = Field(
        "soft_targets", description="How it learns: the teacher's soft targets, function matching, or labels only.")
    temperature: float | None = Field(None, gt=0, description="KD temperature (default: the recipe's).")
    ratio: float | None = Field(None, ge=0, le=1, description="KD's share of the loss (default: the recipe's).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Open settings are off.")


class PilotConfig(Strict):
    """`recipe: auto`'s pilot: the candidate recipes trained briefly, the best on validation used."""

    share: float = Field(0.2, ge=0, le=0.5, description=(
        "The pilot's share of all the job's student-training steps, its own included (0: no pilot, and "
        "auto uses soft targets T=2, ratio 0.5)."))
    candidates: list[CandidateConfig] = Field(default_factory=list, description=(
        "Recipes of your own to measure beside the built-in ones."))
    baseline_augment: AugmentConfig | None = Field(None, description=(
        "The plain student's augmentation (written by a run that chose it; null: the pilot's best plain "
        "candidate, or without a pilot train.augment)."))


class RunConfig(RunHeader):
    name: str = Field("default", min_length=1, description="The run directory's name under output_dir.")
    resume_free = ("train.steps", "train.epochs")  # a resumed run may extend its students' budget
    renamed = {"tracking": "report_to", "kd.alpha": "kd.ratio", "losses.*.alpha": "losses.*.tckd_weight",
               "losses.*.beta": "losses.*.nckd_weight"}
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig = Field(default_factory=TrainConfig, description="Student training (baseline and distilled).")
    kd: KDConfig = Field(default_factory=KDConfig)
    losses: list[Term] = Field(
        default_factory=list,
        description="The distilled student's method as a weighted sum of terms; empty: the `kd` section.")
    recipe: Literal["auto", "function_matching", "soft_targets"] = Field(
        "auto", description="How the distilled student is taught (distill.recipes.classify.plan): function_matching "
        "(the live teacher on the same augmented, mixed view; pure KD), soft_targets (the kd section or "
        "losses as given), or auto (a pilot measures plain training, soft targets and, where inputs can be "
        "shifted or mixed, function matching, and uses the best on validation).")
    pilot: PilotConfig = Field(default_factory=PilotConfig)
    baseline: bool = Field(True, description="Also train the student without the teacher.")
    seeds: int = Field(1, ge=1, le=20, description=(
        "Train the plain and distilled students this many times (train.seed, + 1, …): the verdict's paired "
        "test then weighs the seed-to-seed spread too. The pilot runs once."))
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @model_validator(mode="after")
    def _teacher_signal_fits_augmentation(self) -> RunConfig:
        if self.teacher.signal == "cached" and (self.train.augment.mixup or 0) > 0:
            raise ValueError(
                "train.augment.mixup needs the teacher on each mixed view: set teacher.signal=live"
            )
        if self.teacher.out_of_fold is not None and (self.train.augment.mixup or 0) > 0:
            raise ValueError("train.augment.mixup needs the teacher on each mixed view, and teacher.out_of_fold "
                             "gives fixed targets per training example: remove one of them")
        return self

    @model_validator(mode="after")
    def _tune_fits_recipe(self) -> RunConfig:
        if self.kd.tune is not None and (self.recipe == "function_matching" or self.losses):
            raise ValueError("kd.tune tunes the soft-target KD of the kd section: it applies with recipe "
                             "soft_targets (or auto on non-image data) and no losses list")
        return self

    @model_validator(mode="after")
    def _recipe_fits_signal(self) -> RunConfig:
        if self.recipe == "function_matching" and self.teacher.out_of_fold is not None:
            raise ValueError("recipe: function_matching runs the teacher live on augmented views; "
                             "teacher.out_of_fold gives fixed targets per training example: choose one "
                             "(recipe: soft_targets with out_of_fold)")
        if self.recipe == "function_matching" and self.teacher.signal == "cached":
            raise ValueError("recipe: function_matching shows the teacher each augmented, mixed view, which a "
                             "logit cache cannot do: set teacher.signal=live (or auto), or choose "
                             "recipe: soft_targets")
        return self

    @model_validator(mode="after")
    def _losses_are_usable(self) -> RunConfig:
        check_term_weights(self.losses)
        given = [f"kd.{k}" for k in sorted(self.kd.model_fields_set) if getattr(self.kd, k) is not None]
        if self.losses and given:
            raise ValueError(f"the kd section ({', '.join(given)}) and a losses list are both given; the losses list "
                             "is the whole method, so the kd section would be ignored: set the divergence, "
                             "temperature and weights in the losses terms (e.g. {kind: kd, weight: 0.9, "
                             "temperature: 4}), or drop losses")
        layered = [i for i, t in enumerate(self.losses) if needs_live_teacher(t)]
        if layered and (self.teacher.signal == "cached" or self.teacher.out_of_fold is not None):
            raise ValueError(f"losses[{layered[0]}] reads teacher layers, which a logit cache does not hold: "
                             "set teacher.signal=live")
        return self


def load_config(path: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (a file, a mapping, or None: the built-in default), apply `key=value` overrides, validate."""
    raw = read_raw(path, overrides, default_config_dict if path is not None or not _names_data(overrides)
                   else _default_without_data)
    return validate_config(raw, source=source_name(path, "built-in default"), overrides=overrides)


def default_config_dict() -> dict[str, Any]:
    """The built-in default job: MNIST-5k with labels on 10% of the images, a CNN teacher, an MLP student."""
    return read_yaml(builtin_config("default.yaml"))


def _names_data(overrides: list[str] | None) -> bool:
    return any(item.partition("=")[0].strip() == "data.name" for item in overrides or [])


def _default_without_data() -> dict[str, Any]:
    """The built-in job for other data (`data.name=...` given): its data settings (MNIST-5k, labels on
    10%) are its own, so the user's data starts from the data defaults (every label) and the overrides."""
    raw = default_config_dict()
    raw["data"] = {}
    return raw


def validate_config(raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> RunConfig:
    cfg = validate_section(RunConfig, raw, source, overrides)
    _check_files(cfg)
    if cfg.name == "default" and cfg.data.name in USER_DATA:  # a run on the user's data is named after it
        cfg = cfg.model_copy(update={"name": cfg.data.title})
    return cfg


def _check_files(cfg: RunConfig) -> None:
    hub_id = cfg.data.name == "hf"  # data.path may name a dataset on the hub, not a file
    for key, path in (
        ("data.path", None if hub_id else cfg.data.path),
        ("data.val_path", cfg.data.val_path),
        ("data.test_path", cfg.data.test_path),
        ("data.unlabeled", cfg.data.unlabeled),
        ("teacher.checkpoint", cfg.teacher.checkpoint),
        ("student.checkpoint", cfg.student.checkpoint),
        *((f"teacher.members[{i}].checkpoint", m.checkpoint) for i, m in enumerate(cfg.teacher.members)),
    ):
        if path is not None and not _exists(Path(path)):
            raise ConfigError(f"`{key}`: {path} does not exist. Fix the path or remove the key.")
    if cfg.data.name in USER_DATA and cfg.data.path is None:
        raise ConfigError(f"`data.path`: required when data.name is {cfg.data.name} (the file to read).")


def _exists(path: Path) -> bool:
    """Whether `path` exists; a name the system cannot even look up (too long, a NUL byte) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False
