"""Typed, validated run configuration: the single source of YAML keys and CLI overrides.

Everything is checked before any compute is spent: unknown keys (with the nearest valid name),
wrong types, and files that do not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.errors import ConfigError, did_you_mean


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


_Model = TypeVar("_Model", bound=BaseModel)


class Schedule(Strict):
    """A value that moves from `start` to `end` over training (progress 0 → 1)."""

    start: float
    end: float
    kind: Literal["linear", "cosine"] = "linear"
    until: float = Field(1.0, gt=0, le=1, description="Progress at which `end` is reached and then held: "
                         "0.1 ramps over the first tenth of training (DKD's warm-up).")


Scalar = Union[float, Schedule]


def _values(v: Scalar) -> list[float]:
    return [v.start, v.end] if isinstance(v, Schedule) else [float(v)]


def positive_scalar(v: Scalar, what: str) -> Scalar:
    """A temperature: finite and > 0 (a schedule at both ends). T = 0 divides the logits by zero."""
    bad = [x for x in _values(v) if not (0 < x < float("inf"))]
    if bad:
        raise ValueError(f"{what} must be a finite number > 0 (the logits are divided by it); typical "
                         f"values are 1 to 8")
    return v


def unit_scalar(v: Scalar, what: str) -> Scalar:
    """A mixing weight in [0, 1] (a schedule at both ends)."""
    bad = [x for x in _values(v) if not (0 <= x <= 1)]
    if bad:
        raise ValueError(f"{what} must lie in [0, 1]: it is the share of the loss given to the teacher "
                         f"(1: teacher only, 0: labels only)")
    return v


class DataConfig(Strict):
    name: Literal["digits", "mnist5k", "fashion_mnist", "spoken_digits", "bbc_news", "csv"] = "digits"
    path: Path | None = Field(None, description="Directory (fashion_mnist, bbc_news) or file (csv).")
    label_column: str | int = Field(-1, description="CSV column holding the label.")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used when no test split ships.")
    limit: int | None = Field(None, gt=0, description="Use only this many training examples.")
    label_fraction: float = Field(1.0, gt=0, le=1, description=(
        "Keep labels on this stratified share of the training and validation splits; the rest of the "
        "training split becomes unlabelled inputs that the teacher scores (a transfer set)."))
    unlabeled: Path | None = Field(None, description=(
        "Extra inputs without labels, scored by the teacher (a transfer set): .npy / .npz (array "
        "`inputs`) in the units of the dataset's files, or .txt with one text per line for text data."))
    tokenizer: str | None = Field(None, description="Text data: tokenizer dir or hub id; default "
                                  "sentence-transformers/all-MiniLM-L6-v2.")
    max_length: int = Field(128, ge=2, description="Text data: tokens per example (padded or truncated).")
    seed: int = 0


class ModelConfig(Strict):
    arch: str = Field(..., description="Zoo name (mlp, cnn, resnet) or `module:Class` import path.")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="Weights (.safetensors) to load.")


class FromTeacher(Strict):
    """Build the student as a copy of the trained teacher keeping some of its layers (DistilBERT's
    initialisation): the layers are the children of the nn.ModuleList / nn.Sequential at `path`."""

    path: str = Field(..., description="Module path of the layer list, e.g. `features`, `backbone.encoder.layer`.")
    layers: list[int] | None = Field(None, description="Indices to keep, increasing.")
    every: int | None = Field(None, ge=1, description="Keep every k-th layer: 0, k, 2k, …")

    @model_validator(mode="after")
    def _one_choice(self) -> FromTeacher:
        if (self.layers is None) == (self.every is None):
            raise ValueError("give exactly one of `layers` (indices) or `every` (a step)")
        return self


class StudentConfig(ModelConfig):
    arch: str | None = Field(None, description="Zoo name or `module:Class`; omit with from_teacher.")
    from_teacher: FromTeacher | None = None

    @model_validator(mode="after")
    def _arch_or_teacher(self) -> StudentConfig:
        if (self.arch is None) == (self.from_teacher is None):
            raise ValueError("give the student either `arch` (a model of its own) or `from_teacher` "
                             "(a copy of the teacher with fewer layers), not both or neither")
        return self


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class AugmentConfig(Strict):
    shift: int = Field(0, ge=0, description="Random translation by up to this many pixels.")
    flip: bool = False
    mixup: float = Field(0.0, ge=0, description="Beta(a, a) parameter; 0 disables mixup.")

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.flip or self.mixup > 0


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: Literal["none", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="Epochs without a better val accuracy.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    normalize_terms: bool = Field(False, description="After the loss-scale guard's first steps, divide each loss "
                                  "term by its mean magnitude over them, so each term then weighs about its weight.")


class KDTune(Strict):
    """A short proxy sweep choosing T and α on the validation split (`distill.tune`)."""

    trials: int = Field(6, ge=2, description="Proxy trainings (Optuna TPE over T in [1, 8], α in [0, 1]).")
    epochs: float = Field(0.25, gt=0, le=1, description="Share of train.epochs each proxy trains for.")


class KDConfig(Strict):
    """Soft-target distillation (Hinton et al. 2015): α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE.
    Left out (null), each is the recipe's choice (`distill.recipes`), or the tuner's with `tune`."""

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


# --------------------------------------------------------------------------- method terms
# A method is a weighted sum of terms (`losses:` in a run config). Terms that read layers name
# them by module path (`student:` / `teacher:`, e.g. `features.2`, `encoder.layer.3.output`);
# leaving a path out means the model's logits.


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
    cache_dir: Path = Path("cache/teacher")
    cache_rebuild: bool = Field(False, description="Rebuild cache shards that fail their checksum.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Used when no checkpoint is given.")
    out_of_fold: int | None = Field(None, ge=2, description="k: each training example's soft target comes from "
                                    "one of k extra teachers that did not train on it (distill.out_of_fold); "
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
    throughput_batch: int = Field(256, ge=1)
    repeats: int = Field(50, ge=3)


class RunConfig(Strict):
    name: str = "default"
    output_dir: Path = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig = Field(default_factory=TrainConfig, description="Student training (baseline and distilled).")
    kd: KDConfig = Field(default_factory=KDConfig)
    losses: list[Term] = Field(
        default_factory=list,
        description="The distilled student's method as a weighted sum of terms; empty: the `kd` section.")
    recipe: Literal["auto", "function_matching", "soft_targets"] = Field(
        "auto", description="How the distilled student is taught (distill.recipes): function_matching "
        "(the live teacher on the same augmented, mixed view; pure KD), soft_targets (the kd section or "
        "losses as given), or auto (function matching for images with a transfer set or a teacher near "
        "one-hot on its training images, else soft targets).")
    baseline: bool = Field(True, description="Also train the student without the teacher.")
    bench: BenchConfig = Field(default_factory=BenchConfig)
    tracking: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    quiet: bool = False

    @model_validator(mode="after")
    def _teacher_signal_fits_augmentation(self) -> RunConfig:
        if self.teacher.signal == "cached" and self.train.augment.mixup > 0:
            raise ValueError(
                "train.augment.mixup needs the teacher on each mixed view: set teacher.signal=live"
            )
        if self.teacher.out_of_fold is not None and self.train.augment.mixup > 0:
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
        given = [f"kd.{k}" for k in ("temperature", "alpha") if getattr(self.kd, k) is not None]
        if self.losses and given:
            raise ValueError(f"{' and '.join(given)} and a losses list are both given, and the losses list is the "
                             "whole method (the kd section would be ignored): set the temperature and weights "
                             "in the losses terms (e.g. {kind: kd, weight: 0.9, temperature: 4}), or drop losses")
        layered = [i for i, t in enumerate(self.losses) if needs_live_teacher(t)]
        if layered and (self.teacher.signal == "cached" or self.teacher.out_of_fold is not None):
            raise ValueError(f"losses[{layered[0]}] reads teacher layers, which a logit cache does not hold: "
                             "set teacher.signal=live")
        return self


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


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or the built-in default when `path` is None), apply `key=value` overrides, validate."""
    raw = read_raw(path, overrides, default_config_dict)
    return validate_config(raw, source=str(path or "built-in default"), overrides=overrides)


def read_raw(path: str | Path | None, overrides: list[str] | None, default: Any) -> dict[str, Any]:
    """The YAML mapping at `path` (or `default()`), with `key=value` overrides applied; not validated."""
    raw = _read_yaml(Path(path)) if path else default()
    for item in overrides or []:
        _apply_override(raw, item)
    return raw


def default_config_dict() -> dict[str, Any]:
    """The built-in default job: digits, a small CNN teacher, an MLP student."""
    return _read_yaml(Path(__file__).parent / "configs" / "default.yaml")


def validate_config(raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> RunConfig:
    cfg = validate_section(RunConfig, raw, source, overrides)
    _check_files(cfg)
    return cfg


def validate_section(model: type[_Model], raw: dict[str, Any], source: str,
                     overrides: list[str] | None = None) -> _Model:
    """Validate `raw` as `model`, turning pydantic's errors into one ConfigError naming each key (and
    the command-line override that set it, when one did)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_explain(err, model) + _set_by(err, overrides or []) for err in exc.errors()]
        raise ConfigError(f"Invalid {source}:\n  " + "\n  ".join(lines)) from None


def _set_by(err: dict[str, Any], overrides: list[str]) -> str:
    """A sentence naming the command-line override that wrote the key in error (or a section holding
    it); empty when the value came from the file."""
    key = ".".join(_loc(err))
    for item in reversed(overrides):  # the last override of a key is the one that counts
        target = item.partition("=")[0]
        if key == target or key.startswith(target + ".") or target.startswith(key + "."):
            return f" It was set by the command-line override `{item}`."
    return ""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "pass a YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, not {type(data).__name__}.")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override `{item}` must look like key.path=value (e.g. train.epochs=5).")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override `{item}`: `{part}` holds a value, not a section of keys.")
        node = child
    try:
        node[leaf] = yaml.safe_load(value) if value else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"Override `{item}`: the value is not valid YAML ({problem}); quote it to "
                          f"pass it as text, e.g. {key}='...'.") from None


def _loc(err: dict[str, Any]) -> list[str]:
    """The config keys of a pydantic error's location (union-member tags dropped)."""
    return [str(p) for p in err["loc"] if not str(p).startswith(("float", "Schedule", "function"))]


def _explain(err: dict[str, Any], model: type[BaseModel] = BaseModel) -> str:
    loc = _loc(err)
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], _fields_at(model, loc[:-1]))
        return f"`{key}`: unknown key.{hint}"
    if err["type"] == "missing":
        return f"`{key}`: required key is missing."
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    msg = err["msg"].removeprefix("Value error, ")
    return f"`{key}`: {msg} (got {shown})." if key else f"{msg}."


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid key names of the config section at `path` (for 'did you mean'), through lists and
    sections chosen by `kind` (e.g. `losses.0.hint`)."""
    node: Any = model
    for part in path:
        node = _step(node, part)
        if node is None:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _step(node: Any, part: str) -> Any:
    """The type one key below `node`: a field, a list item (`part` is an index) or a `kind` variant."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part)
        return field.annotation if field else None
    options = [a for a in get_args(node) if a is not type(None)]
    if part.isdigit() and get_origin(node) is list:
        return options[0] if options else None
    for option in options:
        kind = getattr(option, "model_fields", {}).get("kind")
        if kind is not None and part in get_args(kind.annotation):
            return option
        found = _step(option, part) if not isinstance(option, type) else None
        if found is not None:
            return found
    return None


def _check_files(cfg: RunConfig) -> None:
    for key, path in (
        ("data.path", cfg.data.path),
        ("data.unlabeled", cfg.data.unlabeled),
        ("teacher.checkpoint", cfg.teacher.checkpoint),
        ("student.checkpoint", cfg.student.checkpoint),
        *((f"teacher.members[{i}].checkpoint", m.checkpoint) for i, m in enumerate(cfg.teacher.members)),
    ):
        if path is not None and not _exists(Path(path)):
            raise ConfigError(f"`{key}`: {path} does not exist. Fix the path or remove the key.")
    if cfg.data.name == "csv" and cfg.data.path is None:
        raise ConfigError("`data.path`: required when data.name is csv (the CSV file to read).")


def _exists(path: Path) -> bool:
    """Whether `path` exists; a name the system cannot even look up (too long, a NUL byte) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False
