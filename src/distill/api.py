"""Python API: distil any teacher/student `nn.Module` pair on any `Dataset` or `DataLoader`, or run a
whole job (`run`, `lm`, `textkd`: the CLI's commands) from a config.

    >>> from distill import distill, KD
    >>> result = distill(teacher, student, train_data, loss=KD(temperature=4, ratio=0.9))
    >>> result.model, result.metrics
    >>> import distill
    >>> distill.lm(overrides={"train.steps": 50}).report["models"]["distilled"]["ppl"]
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.core.config import validate_section
from distill.core.errors import ConfigError
from distill.data.arrays import as_indexed, labels_of, modality_of
from distill.data.batches import iter_batches
from distill.data.transfer import as_unlabeled, with_transfer_set
from distill.eval.metrics import classification_metrics, mean_confidence, predict
from distill.losses.methods import CE, Method
from distill.models.zoo import freeze, logits_of
from distill.recipes.classify.plan import CONFIDENCE_SAMPLE, resolve
from distill.teachers.output import Teacher
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig


@dataclass
class Result:
    """A trained model, its metrics on the validation data (if given) and its per-epoch history."""

    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def distill(teacher: nn.Module, student: nn.Module, train_data: Dataset | DataLoader, *,
            loss: Method | None = None, val_data: Dataset | DataLoader | None = None,
            signal: Literal["live", "cached"] = "live", cache_dir: str | Path = "cache/teacher",
            config: TrainConfig | None = None, checkpoint_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False, unlabeled: Any = None, **train_options: Any) -> Result:
    """Train `student` to match the frozen `teacher` on `train_data`.

    Args:
        teacher: any module returning logits (or an object with `.logits`); it is frozen.
        student: the module to train; must predict the same classes as the teacher.
        train_data: a Dataset of `(inputs, label)` / dicts, or a DataLoader over one.
        loss: the objective, e.g. `KD(temperature=4, ratio=0.9)`; `CE()` trains without the teacher;
            None (default): the recipe that won our benchmarks (`distill.recipes.classify.plan`): for images with
            a transfer set or a teacher near one-hot on `train_data`, function matching (the live
            teacher scores the same shifted, mixed view; pure KD, T = 1, with `augment` defaulting
            to shifts + mixup), else KD(temperature=2, ratio=0.5);
            `Method([{"kind": "kd"}, {"kind": "hint", "student": "layer2", "teacher": "layer3"}, ...])`
            a weighted sum of terms over logits, layers and attention maps (needs signal="live"
            when a term reads teacher layers).
        val_data: optional held-out data for early stopping and the returned metrics.
        signal: "live" runs the teacher on every batch (needed with augmentation);
            "cached" computes its logits once under `cache_dir` and reuses them (not with the
            default recipe on images, which shows the teacher each augmented view).
        config: full training settings; `train_options` (epochs=, batch_size=, ...) override them.
        checkpoint_dir: where to write atomic per-epoch checkpoints (needed for `resume`).
        unlabeled: extra inputs without labels (a tensor (N, ...), or a Dataset / DataLoader of inputs)
            that the teacher scores: the transfer set. The student learns the teacher's soft targets
            on labelled and unlabelled inputs, the labels' cross-entropy on the labelled ones.
    """
    train_ds, config = _prepare(train_data, config, train_options)
    with token_inputs(teacher, student):  # Hugging Face models take the (B, 2, L) text rows
        example = torch.as_tensor(train_ds[0]["inputs"])
        recipe = resolve("auto" if loss is None else "soft_targets", signal, config.augment, modality_of(example),
                         tuple(example.shape), method=loss if isinstance(loss, Method) else None,
                         transfer_set=unlabeled is not None,
                         confidence=lambda: mean_confidence(teacher, train_ds, CONFIDENCE_SAMPLE))
        loss = recipe.objective if loss is None else loss
        config = config.model_copy(update={"augment": recipe.augment})
        if unlabeled is not None:
            if not loss.needs_teacher:
                raise ConfigError("unlabeled inputs are taught by the teacher, which this loss does not use; "
                                  "pass a distillation loss (e.g. KD()) or drop unlabeled=.")
            train_ds = with_transfer_set(train_ds, as_unlabeled(unlabeled))
        val_ds = _dataset(val_data) if val_data is not None else None
        teacher = freeze(teacher)
        source: Teacher = (LiveTeacher(teacher) if recipe.signal == "live" else
                                 CachedTeacher.build_or_load(teacher, train_ds, Path(cache_dir), quiet=quiet))
        num_classes = _num_classes(teacher, train_ds)
        out = fit(student, train_ds, objective=loss, config=config, num_classes=num_classes, teacher=source,
                  val_data=val_ds, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                  resume=resume, quiet=quiet, name="distilled")
        metrics = _val_metrics(out.model, val_ds, teacher) if val_ds is not None else {}
        return Result(out.model, metrics, out.history)


def train(model: nn.Module, train_data: Dataset | DataLoader, *, num_classes: int | None = None,
          val_data: Dataset | DataLoader | None = None, config: TrainConfig | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          **train_options: Any) -> Result:
    """Train `model` on labels alone (a teacher, or the no-teacher baseline)."""
    train_ds, config = _prepare(train_data, config, train_options)
    with token_inputs(model):  # Hugging Face models take the (B, 2, L) text rows
        val_ds = _dataset(val_data) if val_data is not None else None
        num_classes = num_classes or _num_classes(model, train_ds)
        out = fit(model, train_ds, objective=CE(), config=config, num_classes=num_classes,
                  val_data=val_ds, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                  resume=resume, quiet=quiet, name="model")
        metrics = _val_metrics(out.model, val_ds, None) if val_ds is not None else {}
        return Result(out.model, metrics, out.history)


def _prepare(data: Dataset | DataLoader, config: TrainConfig | None,
             options: dict[str, Any]) -> tuple[Dataset, TrainConfig]:
    base = (config or TrainConfig()).model_dump()
    if isinstance(data, DataLoader) and data.batch_size and "batch_size" not in options:
        options = {**options, "batch_size": data.batch_size}
    if "lr" in options:
        base["optimizer"]["lr"] = options.pop("lr")
    return _dataset(data), validate_section(TrainConfig, {**base, **options}, "training options")


@contextlib.contextmanager
def token_inputs(*models: nn.Module) -> Iterator[None]:
    """Let Hugging Face models take the toolkit's (B, 2, L) text batches: a forward pre-hook turns
    them into `input_ids=` and `attention_mask=`, so module paths (taps) and the models returned stay
    the user's own. Removed on exit; other models and other inputs are untouched."""
    handles = [m.register_forward_pre_hook(_as_token_kwargs, with_kwargs=True) for m in models
               if getattr(m, "main_input_name", None) == "input_ids"]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _as_token_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    x = args[0] if len(args) == 1 and not kwargs else None
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == 2 and not x.is_floating_point():
        return (), {"input_ids": x[:, 0], "attention_mask": x[:, 1]}
    return None


def _dataset(data: Dataset | DataLoader) -> Dataset:
    return as_indexed(data.dataset if isinstance(data, DataLoader) else data)


@torch.no_grad()
def _num_classes(model: nn.Module, data: Dataset) -> int:
    batch = next(iter_batches(data, torch.arange(min(2, len(data))), 2))  # type: ignore[arg-type]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = logits_of(model(batch["inputs"].to(device))).shape[-1]
    model.train(was_training)
    return n


def _val_metrics(model: nn.Module, val: Dataset, teacher: nn.Module | None) -> dict[str, Any]:
    t_logits = predict(teacher, val) if teacher is not None else None
    return classification_metrics(predict(model, val), labels_of(val), t_logits)


# --------------------------------------------------------------------------- the jobs, from Python


@dataclass
class RunResult:
    """A finished job: its run directory (report.md, weights, checkpoints) and its report.json."""

    run_dir: Path

    @property
    def report(self) -> dict[str, Any]:
        """report.json (written by the main process; empty on the others of a torchrun launch)."""
        path = self.run_dir / "report.json"
        return json.loads(path.read_text()) if path.is_file() else {}


Config = Union[str, Path, dict[str, Any], BaseModel, None]


def run(config: Config = None, *, overrides: dict[str, Any] | None = None, resume: bool = False,
        dataset: Any = None) -> RunResult:
    """`distill run` from Python: teacher → baseline and distilled classifier students → report.

    `config`: a YAML file, a mapping of its keys, a `RunConfig`, or None (the built-in job);
    `overrides`: dotted keys, e.g. `{"train.epochs": 5, "kd.ratio": 0.7}`;
    `dataset`: a Hugging Face `Dataset` or `DatasetDict` of texts and labels (name the columns with
    `data.text_column` / `data.label_column`); it is saved once under the distill cache and read as
    `data.name: hf`, so a resumed run finds the same rows.
    """
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.pipeline import run as run_job

    if dataset is not None:
        from distill.core.files import cache_home
        from distill.data.hf_datasets import save_dataset

        path = save_dataset(dataset, cache_home() / "datasets")
        overrides = {**(overrides or {}), "data.name": "hf", "data.path": str(path)}
    return RunResult(run_job(_job_config(load_config, config, overrides), resume=resume))


def lm(config: Config = None, *, overrides: dict[str, Any] | None = None, resume: bool = False) -> RunResult:
    """`distill lm` from Python: token-level distillation of a causal LM (config as in `run`; the
    built-in job distils SmolLM2-135M-Instruct on the KJV)."""
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    return RunResult(run_lm(_job_config(load_lm_config, config, overrides), resume=resume))


def textkd(config: Config = None, *, overrides: dict[str, Any] | None = None, resume: bool = False) -> RunResult:
    """`distill textkd` from Python: students trained on a teacher's generated text — labels, pseudo-labels,
    sequence-level KD, step-by-step rationales (config as in `run`)."""
    from distill.recipes.textkd.config import load_textkd_config
    from distill.recipes.textkd.pipeline import run_textkd

    return RunResult(run_textkd(_job_config(load_textkd_config, config, overrides), resume=resume))


def _job_config(loader: Any, config: Config, overrides: dict[str, Any] | None) -> Any:
    """The job's validated config: a config object as given, anything else read by the job's loader."""
    items = [f"{k}={json.dumps(v, default=str)}" for k, v in (overrides or {}).items()]  # JSON is YAML
    if isinstance(config, BaseModel):
        if not items:
            return config
        config = config.model_dump(mode="json")
    return loader(config, items)
