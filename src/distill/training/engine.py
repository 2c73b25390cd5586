"""The one training loop, for every method: plain supervised training and distillation alike.

Runs under Hugging Face Accelerate, so the same code runs single-process on CPU and under
`torchrun` / `accelerate launch` on several processes or GPUs. Each epoch ends with an atomic
checkpoint (weights, optimizer, scheduler, RNG) from which `resume=True` continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from distill.core.checkpoint import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)
from distill.core.distributed import use_cuda
from distill.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    TrainingDiverged,
)
from distill.core.files import atomic_write_text
from distill.data.arrays import check_label_range, labels_of
from distill.data.augment import augment_batch
from distill.data.batches import iter_batches
from distill.eval.metrics import classification_metrics, predict
from distill.losses.methods import Method, Outputs, collect
from distill.losses.terms import term_scales
from distill.models.zoo import channels_last, device_of, logits_of
from distill.teachers.signals import LiveTeacher, TeacherSignal
from distill.training.config import TrainConfig


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)  # the loss-scale guard's warnings


def fit(model: nn.Module, train_data: Dataset, *, objective: Method, config: TrainConfig,
        num_classes: int, teacher: TeacherSignal | None = None, val_data: Dataset | None = None,
        checkpoint_dir: Path | None = None, resume: bool = False, device: str = "auto",
        quiet: bool = False, tracking: list[str] | None = None, name: str = "student") -> FitResult:
    """Train `model` on `train_data` with `objective`, validating and checkpointing every epoch."""
    if objective.needs_teacher and teacher is None:
        raise ModelError(f"{type(objective).__name__} needs a teacher signal; pass teacher=...")
    if len(train_data) == 0:  # type: ignore[arg-type]
        raise DataError(f"{name}: the training data is empty; give it at least one example.")
    tracking_dir = checkpoint_dir.parent / "tracking" if checkpoint_dir else Path("tracking")
    acc = make_accelerator(device, config.precision, tracking, tracking_dir)
    torch.manual_seed(config.seed)
    model = model.to(acc.device)
    check_shapes(model, objective, teacher, train_data, num_classes, name, acc.device)
    model = _bind(objective, model, teacher, train_data, config.seed, acc.device)
    _fast_layout(teacher, train_data)
    steps_per_epoch = math.ceil(len(train_data) / (config.batch_size * acc.num_processes))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    model, optimizer = acc.prepare(model, optimizer)
    loop = _Loop(acc, model, optimizer, scheduler, objective, teacher, config, num_classes, quiet, name)
    if acc.is_main_process and tracking:
        acc.init_trackers(name, config=_flat(config.model_dump(mode="json")))
    result = FitResult(model=model)
    fingerprint = _fingerprint(config, objective)
    start = loop.restore(checkpoint_dir, result, fingerprint) if resume else 0
    _align_schedule(scheduler, start * steps_per_epoch)
    epochs = tqdm(range(start, config.epochs), desc=name, unit="epoch", initial=start, total=config.epochs,
                  disable=quiet or not acc.is_main_process)
    for epoch in epochs:
        train_stats = loop.train_epoch(train_data, epoch, steps_per_epoch)
        row = {"epoch": epoch, **train_stats, **loop.validate(val_data)}
        epochs.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k in ("train_loss", "val_accuracy")})
        result.history.append(row)
        improved = _is_best(result, row)
        if improved:
            result.best_epoch = epoch
            loop.remember_best(checkpoint_dir)
        loop.save(checkpoint_dir, result, fingerprint, improved)
        acc.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if _patience_over(result, config.early_stopping_patience, epoch):
            result.stopped_early = True
            break
    if tracking:
        acc.end_training()
    result.notes = loop.scale_notes
    if checkpoint_dir is not None and loop.scale_notes and acc.is_main_process:
        atomic_write_text(checkpoint_dir / "notes.json", json.dumps({"loss_scale": loop.scale_notes}))
    best = loop.best_model(checkpoint_dir, result)
    result.model = best.student if isinstance(best, WithAdapters) else best
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


def _fast_layout(teacher: TeacherSignal | None, data: Dataset) -> None:
    """Channels-last weights for a convolutional live teacher (`models.channels_last`): its forward is
    most of a distillation step. The student keeps the default layout: with torch 2.13 on the CPU, the
    backward of a channels-last 1x1 stride-2 convolution (ResNet shortcuts) corrupts the heap."""
    if isinstance(teacher, LiveTeacher):
        example = next(iter_batches(data, torch.arange(min(2, len(data))), 2))["inputs"]
        channels_last(teacher.model, example.to(device_of(teacher.model)))


def _bind(method: Method, student: nn.Module, teacher: TeacherSignal | None, data: Dataset, seed: int,
          device: torch.device) -> nn.Module:
    """Dry-run both models to build the method's adapters; wrap the student with them if any learn."""
    if method.reads_layers and not isinstance(teacher, LiveTeacher):
        raise ModelError("This method reads teacher layers or attention maps, which only a live teacher has; "
                         "pass teacher=LiveTeacher(model) (config: teacher.signal=live).")
    sample = next(iter_batches(data, torch.arange(min(4, len(data))), 4))["inputs"].to(device)
    method.bind(student, teacher.model if isinstance(teacher, LiveTeacher) else None, sample, seed)
    return WithAdapters(student, method) if any(True for _ in method.parameters()) else student


def check_shapes(model: nn.Module, objective: Method, teacher: TeacherSignal | None, data: Dataset,
                 num_classes: int, name: str, device: torch.device) -> None:
    """One dry forward: the student must predict `num_classes`, the teacher the same number."""
    batch = next(iter_batches(data, torch.arange(min(2, len(data))), 2))
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


class _Loop:
    """The per-epoch pieces of `fit`, sharing the prepared objects."""

    def __init__(self, acc: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, objective: Method, teacher: TeacherSignal | None,
                 config: TrainConfig, num_classes: int, quiet: bool, name: str):
        self.acc, self.model, self.optimizer, self.scheduler = acc, model, optimizer, scheduler
        self.objective, self.teacher, self.config = objective, teacher, config
        self.num_classes, self.quiet, self.name = num_classes, quiet, name
        self.best_state: dict[str, torch.Tensor] | None = None
        self.scale_notes: list[str] = []
        self.scales_checked = False
        self.term_scale: dict[str, float] | None = None  # train.normalize_terms: each term's divisor, once set
        inner = acc.unwrap_model(model)
        self.student = inner.student if isinstance(inner, WithAdapters) else inner  # where taps attach

    def train_epoch(self, data: Dataset, epoch: int, steps_per_epoch: int) -> dict[str, float]:
        cfg, acc = self.config, self.acc
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # same order on resume
        order = _shard(torch.randperm(len(data), generator=gen), acc.process_index, acc.num_processes)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, device=acc.device)  # NaN/inf step, tracked without a host sync
        bar = tqdm(iter_batches(data, order, cfg.batch_size), total=steps_per_epoch, leave=False,
                   desc=f"epoch {epoch + 1}", disable=self.quiet or not acc.is_main_process)
        for step, batch in enumerate(bar):
            check_label_range(batch["labels"], self.num_classes, f"{self.name}, epoch {epoch + 1}, batch {step}",
                              unlabeled_ok=self.objective.needs_teacher)
            inputs = batch["inputs"].to(acc.device, non_blocking=True)
            labels = batch["labels"].to(acc.device, non_blocking=True)
            inputs, targets = augment_batch(inputs, labels, self.num_classes, cfg.augment, gen)
            progress = (epoch * steps_per_epoch + step) / (cfg.epochs * steps_per_epoch)
            parts = self.loss(inputs, batch["index"], targets, progress)
            if self.term_scale is not None:
                parts["loss"] = normalized_loss(parts, self.objective.term_weights(progress), self.term_scale)
            acc.backward(parts["loss"])
            if cfg.grad_clip:
                acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            global_step = epoch * steps_per_epoch + step
            bad = ~torch.isfinite(parts["loss"].detach()) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, global_step), first_bad)
            for k, v in parts.items():
                sums[k] = sums.get(k, torch.zeros((), device=acc.device)) + v.detach().float()
            if not self.scales_checked and (global_step + 1 == SCALE_STEPS or step + 1 == steps_per_epoch):
                self.check_scales(sums, step + 1, progress)  # sums restart each epoch: step + 1 steps
            if step % 50 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{float(parts['loss'].detach()):.4f}")
        if int(first_bad) >= 0:
            raise TrainingDiverged(
                f"{self.name}: the loss became NaN/inf at step {int(first_bad)} (epoch {epoch + 1}). "
                "Training stopped; the last good checkpoint is kept. Lower train.optimizer.lr, set "
                "train.grad_clip, or check the inputs for NaN/inf."
            )
        n = max(1, math.ceil(len(order) / cfg.batch_size))
        return {f"train_{k}": float(acc.reduce(v, "mean")) / n for k, v in sums.items()}

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

    def loss(self, inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor,
             progress: float) -> dict[str, torch.Tensor]:
        """One step's loss parts: the objective applied to what it reads from the student and the teacher."""
        objective, teacher = self.objective, self.teacher
        t_out = None
        if objective.reads_layers:
            with torch.no_grad():
                t_out = collect(objective, teacher.model, inputs, teacher=True)  # type: ignore[union-attr]
        elif objective.needs_teacher:
            t_out = Outputs(teacher.signal({"inputs": inputs, "index": index, "labels": targets}).full_logits())  # type: ignore[union-attr]
        with self.acc.autocast():
            s_out = collect(objective, self.student, inputs, teacher=False, call=self.model)
            return objective(s_out, t_out, targets, progress)

    def validate(self, val_data: Dataset | None) -> dict[str, float]:
        if val_data is None or len(val_data) == 0:
            return {}
        logits = predict(self.model, val_data)
        m = classification_metrics(logits, labels_of(val_data))
        return {"val_accuracy": m["accuracy"], "val_nll": m["nll"]}

    def save(self, ckpt_dir: Path | None, result: FitResult, fingerprint: str, improved: bool) -> None:
        if ckpt_dir is None or not self.acc.is_main_process:
            return
        model = self.acc.unwrap_model(self.model)
        state = {"epoch": result.history[-1]["epoch"], "history": result.history,
                 "best_epoch": result.best_epoch, "fingerprint": fingerprint, "term_scale": self.term_scale}
        if improved:
            save_weights(ckpt_dir / "best.safetensors", model, {"epoch": result.best_epoch})
        # metrics before the checkpoint: a kill between the two repeats this epoch on resume (and
        # rewrites its row); the other order could leave a finished run's last row missing
        lines = "".join(json.dumps(r) + "\n" for r in result.history)
        atomic_write_text(ckpt_dir / "metrics.jsonl", lines)
        save_training_state(ckpt_dir / "last.safetensors", model=model, optimizer=self.optimizer,
                            scheduler=self.scheduler, state=state)

    def restore(self, ckpt_dir: Path | None, result: FitResult, fingerprint: str) -> int:
        path = ckpt_dir / "last.safetensors" if ckpt_dir else None
        if path is None or not path.is_file():
            return 0
        state = load_training_state(path, model=self.acc.unwrap_model(self.model),
                                    optimizer=self.optimizer, scheduler=self.scheduler)
        if state["fingerprint"] != fingerprint:
            raise CheckpointError(f"{path} was written with different training settings (or by a version of "
                                  "distill that described them differently); resume with the same config, or "
                                  f"delete {path.parent} to restart this stage, or start a new run (another "
                                  "name / output_dir).")
        result.history, result.best_epoch = state["history"], state["best_epoch"]
        if state.get("term_scale") is not None:  # normalised terms keep the divisors they started with
            self.term_scale, self.scales_checked = state["term_scale"], True
        if _patience_over(result, self.config.early_stopping_patience, state["epoch"]):
            result.stopped_early = True  # it had stopped early: resuming must not train further
            return self.config.epochs
        return state["epoch"] + 1

    def remember_best(self, ckpt_dir: Path | None) -> None:
        """Without a checkpoint directory, keep the best weights in host memory instead of on disk."""
        if ckpt_dir is None:
            model = self.acc.unwrap_model(self.model)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def best_model(self, ckpt_dir: Path | None, result: FitResult) -> nn.Module:
        model = self.acc.unwrap_model(self.model)
        if not result.history or result.best_epoch == result.history[-1]["epoch"]:
            return model.eval()  # the current weights are the best ones
        best = ckpt_dir / "best.safetensors" if ckpt_dir else None
        if best is not None and best.is_file():
            load_weights(best, model)
        elif self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()


SCALE_STEPS = 20  # the loss-scale guard reads the first steps


def normalized_loss(parts: dict[str, torch.Tensor], weights: dict[str, tuple[float, str]],
                    scale: dict[str, float]) -> torch.Tensor:
    """Σ weight · term / (the term's mean magnitude over the guard's first steps)."""
    terms = [w * scale.get(k, 1.0) * parts[k] for k, (w, _) in weights.items() if k in parts and w > 0]
    return torch.stack(terms).sum()


def make_accelerator(device: str, precision: str, tracking: list[str] | None,
                     project_dir: Path | None) -> Accelerator:
    refuse_sharded_engines()
    cuda = use_cuda(device)
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    # Accelerate keeps one process-wide state; a new fit may ask for another precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision=precision, log_with=tracking or None,
                       project_dir=str(project_dir) if project_dir else None)


SHARDED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed ZeRO",
                   "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharded_engines() -> None:
    """Stop before training when `accelerate launch` selected an engine that shards the weights:
    distill's checkpoints and reports read the whole model on the main process, which under FSDP
    or ZeRO holds a shard, so the run would save a fraction of the model (or hang)."""
    import os

    chosen = [name for var, name in SHARDED_ENGINES.items() if os.environ.get(var, "false").lower() == "true"]
    if chosen:
        raise ConfigError(
            f"accelerate launch selected {chosen[0]}, which distill does not run through Accelerate: its "
            "checkpoints would hold one process's shard of the model. Use data parallelism (DDP): `accelerate "
            "config` with distributed_type MULTI_GPU / MULTI_CPU, or torchrun. To shard an LM student, launch "
            "with torchrun and set train.shard=fsdp (distill's own FSDP2). For a teacher too large for one "
            "device, build its top-k cache once where it fits (`distill lm-cache`) and train from the cache "
            "(teacher.signal: cached): training then never loads the teacher.")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters, fused where PyTorch can (`fused_ok`)."""
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if fused_ok(params) else {}
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True,
                               **fused)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, **fused)


def fused_ok(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused optimizer kernels apply: floating-point parameters on the CPU or CUDA.
    One kernel updates every tensor, instead of a dozen element-wise passes per tensor (3x faster
    AdamW steps on the CPU; see BENCHMARKS.md, speed pass)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """Per-step linear warm-up then cosine decay (or constant), so resuming mid-run is exact."""
    return warmup_schedule(optimizer, total=max(1, cfg.epochs * steps_per_epoch),
                           warmup=int(cfg.warmup_epochs * steps_per_epoch), kind=cfg.scheduler)


def warmup_schedule(optimizer: torch.optim.Optimizer, *, total: int, warmup: int, kind: str) -> Any:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total` (or constant for 'none')."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _align_schedule(scheduler: Any, step: int) -> None:
    """After a resume, put the learning-rate schedule at `step` (epochs done × steps per epoch): on
    another number of processes an epoch has another number of steps than the checkpoint counted."""
    if 0 < step != scheduler.last_epoch:
        scheduler.last_epoch = step - 1
        scheduler.step()


def _shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a global order, padded by wrap-around so every rank gets as many."""
    if world == 1:
        return order
    per_rank = math.ceil(len(order) / world)
    padded = torch.cat([order, order[: per_rank * world - len(order)]])
    return padded[rank::world]


def _is_best(result: FitResult, row: dict[str, float]) -> bool:
    """Whether `row` ranks above the best epoch so far (`best_key`). Ties in validation accuracy go to
    the lower validation NLL: a small validation set ties often, and the first tied epoch is rarely
    the best."""
    if result.best_epoch < 0:
        return True
    best = next(r for r in result.history if r["epoch"] == result.best_epoch)
    return best_key(row) > best_key(best)


def best_key(row: dict[str, float]) -> tuple[float, ...]:
    """How an epoch's metrics row ranks (higher is better): validation accuracy, then lower validation
    NLL; without validation data, lower training loss."""
    if "val_accuracy" not in row:
        return (-row["train_loss"],)
    return (row["val_accuracy"], -row["val_nll"])


def _patience_over(result: FitResult, patience: int | None, epoch: int) -> bool:
    return patience is not None and epoch - result.best_epoch >= patience


def _fingerprint(config: TrainConfig, objective: Method) -> str:
    off = {"normalize_terms"} if not config.normalize_terms else None  # runs from before it existed still resume
    text = json.dumps(config.model_dump(mode="json", exclude=off), sort_keys=True) + repr(objective)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
