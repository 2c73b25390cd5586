"""Classifiers on the training engine: `fit` trains any `nn.Module` with a `Method` (plain CE, KD, or a
weighted sum of terms over logits, layers and attention maps), epoch by epoch.

The task's part of each step: a seeded order per epoch (the same after a resume, sharded over the
processes), augmentation (shifts, flips, mixup) on the device, the teacher's signal on the same
view, the method's loss, the loss-scale guard; after each epoch, validation accuracy and NLL, the
best epoch's weights kept, early stopping.

Budgets are steps (`train.steps`, or `train.epochs` of the data's size); validation rows come every
`train.eval_every` steps (default once per epoch) and at the end, checkpoints every `train.save_every`.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from distill.core.checkpoint import load_weights
from distill.core.errors import DataError, ModelError
from distill.core.files import atomic_write_text
from distill.data.arrays import check_label_range, labels_of
from distill.data.augment import augment_batch
from distill.data.batches import iter_batches
from distill.eval.metrics import classification_metrics, predict
from distill.losses.methods import Method, Outputs, collect
from distill.losses.terms import term_scales
from distill.models.zoo import channels_last, device_of, logits_of
from distill.teachers.output import Teacher
from distill.teachers.signals import LiveTeacher
from distill.training.tracking import flat_settings
from distill.training.config import TrainConfig
from distill.training.engine import FitResult, Run, train

SCALE_STEPS = 20  # the loss-scale guard reads the first steps


def fit(model: nn.Module, train_data: Dataset, *, objective: Method, config: TrainConfig,
        num_classes: int, teacher: Teacher | None = None, val_data: Dataset | None = None,
        checkpoint_dir: Path | None = None, resume: bool = False, device: str = "auto",
        quiet: bool = False, tracking: list[str] | None = None, name: str = "student",
        stop_at: int | None = None, project: str | None = None) -> FitResult:
    """Train `model` on `train_data` with `objective`, validating and checkpointing as `config` says.
    `stop_at`: pause after that many steps (validated and, with `checkpoint_dir`, checkpointed there);
    a later call with `resume=True` continues the same schedule."""
    if objective.needs_teacher and teacher is None:
        raise ModelError(f"{type(objective).__name__} needs a teacher signal; pass teacher=...")
    if len(train_data) == 0:  # type: ignore[arg-type]
        raise DataError(f"{name}: the training data is empty; give it at least one example.")
    task = ClassifierTask(model, train_data, objective, config, num_classes, teacher, val_data, name)
    run = Run(checkpoint_dir=checkpoint_dir, resume=resume, device=device, quiet=quiet, tracking=tracking, project=project,
              tracked=flat_settings(config.model_dump(mode="json")), progress=("train_loss", "val_accuracy"), stop_at=stop_at)
    result = train(task, run)
    result.notes = task.scale_notes
    if checkpoint_dir is not None and task.scale_notes and task.acc.is_main_process:
        atomic_write_text(checkpoint_dir / "notes.json", json.dumps({"loss_scale": task.scale_notes}))
    return result


class WithAdapters(nn.Module):
    """The student and its method's adapters as one trainable module; `forward` is the student's.

    Optimised, checkpointed and (under DDP) synchronised together; only `.student` is returned
    from `fit`, so adapters never reach an exported model.
    """

    def __init__(self, student: nn.Module, method: Method):
        super().__init__()
        self.student, self.method = student, method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


class ClassifierTask:
    """The classifier's plug into the engine (`distill.training.engine.Task`)."""

    def __init__(self, model: nn.Module, data: Dataset, objective: Method, config: TrainConfig, num_classes: int,
                 teacher: Teacher | None, val_data: Dataset | None, name: str):
        self.raw, self.data, self.objective, self.config = model, data, objective, config
        self.num_classes, self.teacher, self.val_data, self.name = num_classes, teacher, val_data, name
        self.scale_notes: list[str] = []
        self.scales_checked = False
        self.term_scale: dict[str, float] | None = None  # train.normalize_terms: each term's divisor, once set
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch = -1
        self.rows: list[dict[str, float]] = []  # the metrics rows so far (the engine's history)

    # ----------------------------------------------------------------------------------- set-up

    def setup(self, acc: Accelerator) -> nn.Module:
        self.acc = acc
        self.steps_per_epoch = math.ceil(len(self.data) / (self.config.batch_size * acc.num_processes))  # type: ignore[arg-type]
        self.steps = self.config.total_steps(self.steps_per_epoch)
        self.warmup_steps = int(self.config.warmup_epochs * self.steps_per_epoch)
        self.eval_every = self.config.eval_every or self.steps_per_epoch
        self.save_every = self.config.save_every or self.eval_every
        model = self.raw.to(acc.device)
        check_shapes(model, self.objective, self.teacher, self.data, self.num_classes, self.name, acc.device)
        self.trained = _bind(self.objective, model, self.teacher, self.data, self.config.seed, acc.device)
        _fast_layout(self.teacher, self.data)
        self.student = model  # where taps attach
        self.fingerprint = _fingerprint(self.config, self.objective)
        return self.trained

    def prepare(self, acc: Accelerator, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self.model, optimizer = acc.prepare(self.trained, optimizer)
        return optimizer

    # ----------------------------------------------------------------------------------- steps

    def begin_epoch(self, epoch: int) -> None:
        """A new epoch's order and random stream (seeded by epoch: the same after a resume)."""
        self.epoch = epoch
        self.gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = _shard(torch.randperm(len(self.data), generator=self.gen), self.acc.process_index,  # type: ignore[arg-type]
                       self.acc.num_processes)
        self.batches = iter(iter_batches(self.data, order, self.config.batch_size))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            self.begin_epoch(epoch)
        batch = next(self.batches)
        check_label_range(batch["labels"], self.num_classes, f"{self.name}, epoch {epoch + 1}, batch {in_epoch}",
                          unlabeled_ok=self.objective.needs_teacher)
        inputs = batch["inputs"].to(self.acc.device, non_blocking=True)
        labels = batch["labels"].to(self.acc.device, non_blocking=True)
        inputs, targets = augment_batch(inputs, labels, self.num_classes, self.config.augment, self.gen)
        return {"inputs": inputs, "index": batch["index"], "labels": targets}

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One step's loss parts: the objective applied to what it reads from the student and the teacher."""
        objective, teacher, progress = self.objective, self.teacher, step / self.steps
        inputs, targets = batch["inputs"], batch["labels"]
        t_out = None
        if objective.reads_layers:
            with torch.no_grad():
                t_out = collect(objective, teacher.model, inputs, teacher=True)  # type: ignore[union-attr]
        elif objective.needs_teacher:
            t_out = Outputs(teacher.signal(batch).full_logits())  # type: ignore[union-attr]
        self.model.train()
        with self.acc.autocast():
            s_out = collect(objective, self.student, inputs, teacher=False, call=self.model)
            parts = objective(s_out, t_out, targets, progress)
        if self.term_scale is not None:
            parts["loss"] = normalized_loss(parts, objective.term_weights(progress), self.term_scale)
        return parts

    def after_step(self, step: int, sums: dict[str, torch.Tensor], count: int) -> None:
        if not self.scales_checked and (step + 1 == SCALE_STEPS or count == self.steps_per_epoch):
            self.check_scales(sums, count, step / self.steps)  # sums restart each epoch: `count` steps

    def check_scales(self, sums: dict[str, torch.Tensor], steps: int, progress: float) -> None:
        """The loss-scale guard: warn, once, when one term dwarfs another over the first steps
        (`losses.term_scales`), and keep the warnings for the report (`scale_notes`)."""
        self.scales_checked = True
        if self.config.normalize_terms:  # every process gets the same divisors: means over all of them
            means = {k: float(self.acc.reduce(v.clone(), "mean")) / steps for k, v in sums.items() if k != "loss"}
            self.term_scale = {k: 1 / m if abs(m) > 1e-12 else 1.0 for k, m in means.items()}
            self.scale_notes = [f"terms normalised after {steps} steps (train.normalize_terms): " + ", ".join(
                f"`{k}` ÷ {abs(m):.3g}" for k, m in means.items())]
            return
        means = {k: float(v) for k, v in sums.items() if k != "loss"}
        self.scale_notes = term_scales(means, self.objective.term_weights(progress), steps)
        for note in self.scale_notes:
            if self.acc.is_main_process:
                warnings.warn(f"{self.name}: {note}", stacklevel=2)

    # ----------------------------------------------------------------------------------- rows and checkpoints

    def where(self, step: int) -> str:
        return f" (epoch {step // self.steps_per_epoch + 1})"

    def row_due(self, done: int) -> bool:
        return done % self.eval_every == 0 or done == self.steps

    def save_due(self, done: int) -> bool:
        return done % self.save_every == 0 or done == self.steps

    def row(self, done: int) -> dict[str, float]:
        """Where training is (optimizer steps done, epochs done) and the validation metrics there."""
        return {"step": done, "epoch": round(done / self.steps_per_epoch, 4), **self.validate()}

    def validate(self) -> dict[str, float]:
        if self.val_data is None or len(self.val_data) == 0:  # type: ignore[arg-type]
            return {}
        m = classification_metrics(predict(self.model, self.val_data), labels_of(self.val_data))
        return {"val_accuracy": m["accuracy"], "val_nll": m["nll"]}

    def better(self, row: dict[str, float], best: dict[str, float] | None) -> bool:
        """Whether `row` becomes the row whose weights are kept (`kept_row` over every row so far)."""
        self.rows.append(row)
        n_val = len(self.val_data) if self.val_data is not None else 0  # type: ignore[arg-type]
        return kept_row(self.rows, n_val) == len(self.rows) - 1

    def stop(self, result: FitResult) -> bool:
        return _patience_over(result.history, self.config.early_stopping_patience)

    def remember_best(self) -> None:
        """Keep the best weights in host memory (used when there is no checkpoint directory)."""
        model = self.acc.unwrap_model(self.model)
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def views(self, optimizer: torch.optim.Optimizer, saving: bool) -> tuple[Any, Any]:
        return self.acc.unwrap_model(self.model), optimizer

    def state(self, result: FitResult) -> dict[str, Any]:
        return {"best_epoch": result.best_epoch, "term_scale": self.term_scale,
                "steps_per_epoch": self.steps_per_epoch}  # resumable on another number of processes

    def load_state(self, state: dict[str, Any], result: FitResult) -> int:
        result.best_epoch = state["best_epoch"]
        self.rows = list(result.history)
        if state.get("term_scale") is not None:  # normalised terms keep the divisors they started with
            self.term_scale, self.scales_checked = state["term_scale"], True
        if _patience_over(result.history, self.config.early_stopping_patience):
            result.stopped_early = True
        if "epoch" in state:  # checkpoints from before step budgets: epochs done, in this run's steps
            return (state["epoch"] + 1) * self.steps_per_epoch
        return round(state["step"] / state["steps_per_epoch"] * self.steps_per_epoch)  # in this run's steps

    def finish(self, result: FitResult, checkpoint_dir: Path | None) -> nn.Module:
        """The best epoch's student (its adapters stay behind)."""
        model = self.acc.unwrap_model(self.model)
        if result.history and result.best_epoch != len(result.history) - 1:
            best = checkpoint_dir / "best.safetensors" if checkpoint_dir else None
            if best is not None and best.is_file():
                load_weights(best, model)
            elif self.best_state is not None:
                model.load_state_dict(self.best_state)
        model.eval()
        return model.student if isinstance(model, WithAdapters) else model


def check_shapes(model: nn.Module, objective: Method, teacher: Teacher | None, data: Dataset,
                 num_classes: int, name: str, device: torch.device) -> None:
    """One dry forward: the student must predict `num_classes`, the teacher the same number."""
    batch = next(iter_batches(data, torch.arange(min(2, len(data))), 2))  # type: ignore[arg-type]
    inputs = batch["inputs"].to(device)
    model.eval()
    try:
        with torch.no_grad():
            out = logits_of(model(inputs)).shape[-1]
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"{name} cannot run on the data's inputs (a batch of shape "
                         f"{tuple(inputs.shape)}, {inputs.dtype}): {exc}. Build the model for inputs of "
                         "that shape and dtype, or reshape / convert the data.") from exc
    model.train()
    if out != num_classes:
        raise ModelError(f"{name} outputs {out} classes but the data has {num_classes}; "
                         "set the model's num_classes to match.")
    if objective.needs_teacher:
        t_out = teacher.signal({"inputs": inputs, "index": batch["index"]}).full_logits().shape[-1]  # type: ignore[union-attr]
        if t_out != out:
            raise ModelError(f"The teacher outputs {t_out} classes but the student outputs {out}; "
                             "distillation needs the same label space. Fix the num_classes of one of them.")


def _fast_layout(teacher: Teacher | None, data: Dataset) -> None:
    """Channels-last weights for a convolutional live teacher (`models.channels_last`): its forward is
    most of a distillation step. The student keeps the default layout: with torch 2.13 on the CPU, the
    backward of a channels-last 1x1 stride-2 convolution (ResNet shortcuts) corrupts the heap."""
    if isinstance(teacher, LiveTeacher):
        example = next(iter_batches(data, torch.arange(min(2, len(data))), 2))["inputs"]  # type: ignore[arg-type]
        channels_last(teacher.model, example.to(device_of(teacher.model)))


def _bind(method: Method, student: nn.Module, teacher: Teacher | None, data: Dataset, seed: int,
          device: torch.device) -> nn.Module:
    """Dry-run both models to build the method's adapters; wrap the student with them if any learn."""
    if method.reads_layers and not isinstance(teacher, LiveTeacher):
        raise ModelError("This method reads teacher layers or attention maps, which only a live teacher has; "
                         "pass teacher=LiveTeacher(model) (config: teacher.signal=live).")
    sample = next(iter_batches(data, torch.arange(min(4, len(data))), 4))["inputs"].to(device)  # type: ignore[arg-type]
    method.bind(student, teacher.model if isinstance(teacher, LiveTeacher) else None, sample, seed)
    return WithAdapters(student, method) if any(True for _ in method.parameters()) else student


def normalized_loss(parts: dict[str, torch.Tensor], weights: dict[str, tuple[float, str]],
                    scale: dict[str, float]) -> torch.Tensor:
    """Σ weight · term / (the term's mean magnitude over the guard's first steps)."""
    terms = [w * scale.get(k, 1.0) * parts[k] for k, (w, _) in weights.items() if k in parts and w > 0]
    return torch.stack(terms).sum()


def _shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a global order, padded by wrap-around so every rank gets as many."""
    if world == 1:
        return order
    per_rank = math.ceil(len(order) / world)
    padded = torch.cat([order, order[: per_rank * world - len(order)]])
    return padded[rank::world]


def kept_row(rows: list[dict[str, float]], n_val: int) -> int:
    """The metrics row whose weights a run keeps: the latest one whose validation accuracy is within one
    standard error (sqrt(p(1 − p) / n) at the best accuracy p, over `n_val` examples) of the best. On a
    large validation split that is the best row; on a small one (the 28 images of 10% of a 300-image
    split), where the best row is mostly the luckiest, it is a later, better-trained one unless accuracy
    really fell. Without validation data: the row of lowest training loss."""
    if "val_accuracy" not in rows[0]:
        return min(range(len(rows)), key=lambda i: rows[i]["train_loss"])
    peak = max(r["val_accuracy"] for r in rows)
    tolerance = math.sqrt(peak * (1 - peak) / max(1, n_val))
    return max(i for i, r in enumerate(rows) if r["val_accuracy"] >= peak - tolerance - 1e-12)


def _patience_over(rows: list[dict[str, float]], patience: int | None) -> bool:
    """Whether `patience` validation rows have passed since the best accuracy (or training loss) was last
    raised: a plateau stops training even where `kept_row` keeps moving to later rows."""
    if patience is None or not rows:
        return False
    key = (lambda r: r["val_accuracy"]) if "val_accuracy" in rows[0] else (lambda r: -r["train_loss"])
    best = max(key(r) for r in rows)
    first = next(i for i, r in enumerate(rows) if key(r) == best)
    return len(rows) - 1 - first >= patience


def _fingerprint(config: TrainConfig, objective: Method) -> str:
    # the budget may grow on resume (the schedule then stretches to the new end); settings added later, left
    # at their defaults, keep the fingerprint of runs from before they existed
    off = {"epochs", "steps"} | {k for k in ("eval_every", "save_every") if getattr(config, k) is None}
    off |= set() if config.normalize_terms else {"normalize_terms"}
    text = json.dumps(config.model_dump(mode="json", exclude=off), sort_keys=True) + repr(objective)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


