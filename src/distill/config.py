"""Typed, validated run configuration: the single source of YAML keys and CLI overrides.

Everything is checked before any compute is spent: unknown keys (with the nearest valid name),
wrong types, and files that do not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


Scalar = Union[float, Schedule]


class DataConfig(Strict):
    name: Literal["digits", "mnist5k", "fashion_mnist", "csv"] = "digits"
    path: Path | None = Field(None, description="Directory (fashion_mnist) or file (csv).")
    label_column: str | int = Field(-1, description="CSV column holding the label.")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used when no test split ships.")
    limit: int | None = Field(None, gt=0, description="Use only this many training examples.")
    seed: int = 0


class ModelConfig(Strict):
    arch: str = Field(..., description="Zoo name (mlp, cnn, resnet) or `module:Class` import path.")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="Weights (.safetensors) to load.")


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


class KDConfig(Strict):
    """Soft-target distillation (Hinton et al. 2015): α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE."""

    temperature: Scalar = 4.0
    alpha: Scalar = 0.9


class TeacherConfig(ModelConfig):
    signal: Literal["live", "cached"] = Field(
        "cached",
        description="live: the teacher runs on every (augmented) batch, i.e. consistent teaching; "
        "cached: its logits on the clean training set are computed once and reused.",
    )
    cache_dir: Path = Path("cache/teacher")
    cache_rebuild: bool = Field(False, description="Rebuild cache shards that fail their checksum.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Used when no checkpoint is given.")


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
    student: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig, description="Student training (baseline and distilled).")
    kd: KDConfig = Field(default_factory=KDConfig)
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
        return self


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or the built-in default when `path` is None), apply `key=value` overrides, validate."""
    raw = read_raw(path, overrides, default_config_dict)
    return validate_config(raw, source=str(path or "built-in default"))


def read_raw(path: str | Path | None, overrides: list[str] | None, default: Any) -> dict[str, Any]:
    """The YAML mapping at `path` (or `default()`), with `key=value` overrides applied; not validated."""
    raw = _read_yaml(Path(path)) if path else default()
    for item in overrides or []:
        _apply_override(raw, item)
    return raw


def default_config_dict() -> dict[str, Any]:
    """The built-in default job: digits, a small CNN teacher, an MLP student."""
    return _read_yaml(Path(__file__).parent / "configs" / "default.yaml")


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    cfg = validate_section(RunConfig, raw, source)
    _check_files(cfg)
    return cfg


def validate_section(model: type[_Model], raw: dict[str, Any], source: str) -> _Model:
    """Validate `raw` as `model`, turning pydantic's errors into one ConfigError naming each key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_explain(err, model) for err in exc.errors()]
        raise ConfigError(f"Invalid {source}:\n  " + "\n  ".join(lines)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
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
    node[leaf] = yaml.safe_load(value) if value else None


def _explain(err: dict[str, Any], model: type[BaseModel] = BaseModel) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("float", "Schedule", "function"))]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], _fields_at(model, loc[:-1]))
        return f"`{key}`: unknown key.{hint}"
    if err["type"] == "missing":
        return f"`{key}`: required key is missing."
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"`{key}`: {err['msg']} (got {shown})." if key else f"{err['msg']}."


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid key names of the config section at `path` (for 'did you mean')."""
    for part in path:
        field = model.model_fields.get(part)
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return list(model.model_fields)


def _check_files(cfg: RunConfig) -> None:
    for key, path in (
        ("data.path", cfg.data.path),
        ("teacher.checkpoint", cfg.teacher.checkpoint),
        ("student.checkpoint", cfg.student.checkpoint),
    ):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"`{key}`: {path} does not exist. Fix the path or remove the key.")
    if cfg.data.name == "csv" and cfg.data.path is None:
        raise ConfigError("`data.path`: required when data.name is csv (the CSV file to read).")
