"""The one training engine: a step loop for every job. Classifiers (`distill.training.classify`) and
token language models (`distill.training.lm`) plug in as a `Task` — their batches, loss, validation
and best-checkpoint choice — and share everything else here:

* Hugging Face Accelerate, so the same code runs single-process on CPU and under `torchrun` /
  `accelerate launch` (DDP; the LM task also shards with FSDP2);
* the optimizer and a per-step learning-rate schedule, so resuming is exact;
* NaN/inf detection without a host sync per step (checked, on every process at once, at each
  metrics row and checkpoint);
* atomic checkpoints (`last.safetensors`: weights, optimizer, schedule, RNG and the metrics rows,
  with a fingerprint of the settings; `best.safetensors` when the task ranks rows) and resume;
* tracking (TensorBoard, MLflow) and one progress bar with an ETA.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from distill.core.checkpoint import (
    CorruptCheckpoint,
    load_training_state,
    read_weights,
    save_training_state,
    save_weights,
)
from distill.core.distributed import process_state
from distill.core.errors import CheckpointError, TrainingDiverged
from distill.core.files import atomic_write_text
from distill.training.tracking import trackers
from distill.training.optim import align_schedule, make_accelerator, make_optimizer, warmup_schedule


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1  # tasks that rank rows: the row (epoch) whose weights are returned
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)  # the loss-scale guard's warnings


class Task(Protocol):
    """What a kind of training adds to the engine (see `distill.training.classify.ClassifierTask`)."""

    name: str
    config: Any  # optimizer, scheduler, grad_clip, precision, seed
    steps: int
    warmup_steps: int
    fingerprint: str

    def setup(self, acc: Accelerator) -> nn.Module: ...  # the module whose parameters train, on acc.device
    def prepare(self, acc: Accelerator, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer: ...
    def batch(self, step: int) -> dict[str, torch.Tensor]: ...
    def loss(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]: ...
    def after_step(self, step: int, sums: dict[str, torch.Tensor], count: int) -> None: ...
    def where(self, step: int) -> str: ...  # e.g. " (epoch 3)", after "at step N"
    def row_due(self, done: int) -> bool: ...
    def save_due(self, done: int) -> bool: ...
    def row(self, done: int) -> dict[str, float]: ...  # its position and validation metrics
    def better(self, row: dict[str, float], best: dict[str, float] | None) -> bool | None: ...
    def stop(self, result: FitResult) -> bool: ...
    def views(self, optimizer: torch.optim.Optimizer, saving: bool) -> tuple[Any, Any]: ...
    def state(self, result: FitResult) -> dict[str, Any]: ...
    def load_state(self, state: dict[str, Any], result: FitResult) -> int: ...
    def remember_best(self) -> None: ...
    def finish(self, result: FitResult, checkpoint_dir: Path | None) -> nn.Module: ...


@dataclass
class Run:
    """Where a run writes and how it reports (the task holds what it trains with)."""

    checkpoint_dir: Path | None = None
    resume: bool = False
    device: str = "auto"
    quiet: bool = False
    tracking: list[str] | None = None  # report_to: tensorboard, mlflow, wandb (distill.training.tracking)
    project: str | None = None  # the job's name: the MLflow experiment and W&B project of its stages
    tracked: dict[str, Any] = field(default_factory=dict)  # the settings shown by the trackers
    progress: tuple[str, ...] = ("train_loss",)  # row keys shown beside the progress bar
    stop_at: int | None = None  # pause after this many steps (a metrics row and a checkpoint there); resume later


def train(task: Task, run: Run) -> FitResult:
    """Train `task` for `task.steps` optimizer steps, resuming from `run.checkpoint_dir` when asked."""
    cfg = task.config
    tracking_dir = run.checkpoint_dir.parent / "tracking" if run.checkpoint_dir else Path("tracking")
    main = process_state(run.device).is_main_process  # only it logs: one tracker run, one writer of its store
    logs = trackers(run.tracking, run.project or task.name, task.name, tracking_dir) if run.tracking and main else None
    acc = make_accelerator(run.device, cfg.precision, logs, tracking_dir)
    torch.manual_seed(cfg.seed)
    module = task.setup(acc)
    optimizer = make_optimizer(module, cfg)
    scheduler = warmup_schedule(optimizer, total=max(1, task.steps), warmup=task.warmup_steps, kind=cfg.scheduler)
    optimizer = task.prepare(acc, optimizer)
    if logs:
        acc.init_trackers(task.name, config=run.tracked)
    result = FitResult(model=module)
    loop = _Steps(acc, task, run, module, optimizer, scheduler, result)
    start = _restore(task, run.checkpoint_dir, optimizer, scheduler, result, loop) if run.resume else 0
    if logs:  # rows trained before (in the pilot, or before a kill): the trackers show the whole curve
        for row in result.history:
            loop.log(row)
    align_schedule(scheduler, start)
    loop.run(start)
    if run.tracking:
        acc.end_training()
    result.model = task.finish(result, run.checkpoint_dir)
    return result


class _Steps:
    """The loop itself, sharing the prepared objects."""

    def __init__(self, acc: Accelerator, task: Task, run: Run, module: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, result: FitResult):
        self.acc, self.task, self.run_cfg, self.module = acc, task, run, module
        self.optimizer, self.scheduler, self.result = optimizer, scheduler, result
        self.sums: dict[str, torch.Tensor] = {}  # summed on the device: the loop never waits for the host
        self.count = 0
        self.first_bad = torch.full((), -1, device=acc.device)  # the first NaN/inf step, without a host sync
        self.postfix: dict[str, str] = {}  # what the progress bar shows beside its count

    def run(self, start: int) -> None:
        task, acc = self.task, self.acc
        if self.result.stopped_early:  # it had stopped early: resuming must not train further
            return
        end = task.steps if self.run_cfg.stop_at is None else min(task.steps, self.run_cfg.stop_at)
        bar = tqdm(range(start, end), desc=task.name, unit="step", initial=start, total=task.steps,
                   disable=self.run_cfg.quiet or not acc.is_main_process)
        shown = time.monotonic()
        for step in bar:
            self.step(step)
            done = step + 1
            if not bar.disable and time.monotonic() - shown >= 1.0:  # the running loss, one host sync a second
                shown = time.monotonic()
                self.show_running_loss(bar)
            row_due = task.row_due(done) or done == end
            save_due = self.run_cfg.checkpoint_dir is not None and (task.save_due(done) or done == end)
            if row_due or save_due:
                self.check_finite(done)
            improved = self.add_row(done, bar) if row_due else False
            if save_due:
                self.save(done, improved)
            if row_due and task.stop(self.result):
                self.result.stopped_early = True
                break
        bar.close()

    def step(self, step: int) -> None:
        task, acc = self.task, self.acc
        batch = task.batch(step)  # the task puts its model in training mode (validation leaves it in eval)
        parts = task.loss(batch, step)
        acc.backward(parts["loss"])
        if task.config.grad_clip:
            acc.clip_grad_norm_(self.module.parameters(), task.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        bad = ~torch.isfinite(parts["loss"].detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, torch.zeros((), device=acc.device)) + v.detach().float()
        self.count += 1
        task.after_step(step, self.sums, self.count)

    def show_running_loss(self, bar: Any) -> None:
        """The mean training loss since the last metrics row, on the progress bar beside the last row's figures."""
        if self.count and "loss" in self.sums:
            self.postfix["train_loss"] = f"{float(self.sums['loss']) / self.count:.4f}"
            bar.set_postfix(self.postfix)

    def check_finite(self, done: int) -> None:
        """After `done` steps: raise on every process at once (a process that alone stopped would leave the others waiting)."""
        first = self.first_bad.reshape(1)
        if self.acc.num_processes > 1:  # the earliest bad step of any process (-1: none)
            every = self.acc.gather(first)
            bad = every[every >= 0]
            first = bad.min() if len(bad) else first.new_tensor(-1)
        worst = int(first)
        if worst >= 0:
            raise TrainingDiverged(
                f"{self.task.name}: the loss became NaN/inf at step {worst}{self.task.where(worst)}. "
                "Training stopped; the last good "
                "checkpoint is kept. Lower train.optimizer.lr, set train.grad_clip, or check the inputs for "
                "NaN/inf.")

    def add_row(self, done: int, bar: Any) -> bool:
        """Append the metrics row due after `done` steps; whether it is the best so far."""
        means = {f"train_{k}": float(self.acc.reduce(v, "mean")) / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        position = self.task.row(done)
        row = {**{k: v for k, v in position.items() if not k.startswith("val_")}, **means,
               **{k: v for k, v in position.items() if k.startswith("val_")}}
        history = self.result.history
        best = next((r for i, r in enumerate(history) if i == self.result.best_epoch), None)
        history.append(row)
        improved = bool(self.task.better(row, best))
        if improved:
            self.result.best_epoch = len(history) - 1
            if self.run_cfg.checkpoint_dir is None:  # otherwise best.safetensors keeps them
                self.task.remember_best()
        self.postfix = {k: f"{v:.4f}" for k, v in row.items() if k in self.run_cfg.progress}
        bar.set_postfix(self.postfix)
        if self.run_cfg.tracking:
            self.log(row)
        return improved

    def log(self, row: dict[str, float]) -> None:
        key = next(iter(row))  # the row's position comes first: its step (LM) or epoch count (classifier)
        self.acc.log({k: v for k, v in row.items() if k != key}, step=int(row[key]))

    def save(self, done: int, improved: bool) -> None:
        """Metrics rows, then the training state (a kill between the two repeats steps on resume and
        rewrites their rows; the other order could leave a finished run's last rows missing). The loss
        sums since the last row go with it, so the next row after a resume counts every step."""
        partial = {k: float(self.acc.reduce(v.clone(), "mean")) for k, v in self.sums.items()}  # every process
        model, optimizer = self.task.views(self.optimizer, saving=True)  # under FSDP every process gathers
        if not self.acc.is_main_process:
            return
        ckpt_dir = self.run_cfg.checkpoint_dir
        assert ckpt_dir is not None
        result = self.result
        if improved:
            save_weights(ckpt_dir / "best.safetensors", model, {"epoch": result.best_epoch})
        atomic_write_text(ckpt_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
        state = {"step": done, "history": result.history, "fingerprint": self.task.fingerprint,
                 "partial": {"sums": partial, "steps": self.count}, **self.task.state(result)}
        save_training_state(ckpt_dir / "last.safetensors", model=model, optimizer=optimizer,
                            scheduler=self.scheduler, state=state)


def _intact(path: Path) -> bool:
    """Whether a weights file exists and reads back whole (its checksum matching)."""
    try:
        read_weights(path)
        return True
    except CheckpointError:
        return False


def _restore(task: Task, ckpt_dir: Path | None, optimizer: torch.optim.Optimizer, scheduler: Any,
             result: FitResult, loop: _Steps) -> int:
    """The step to continue from: 0 without a checkpoint."""
    path = ckpt_dir / "last.safetensors" if ckpt_dir else None
    if path is None or not path.is_file():
        return 0
    model, opt = task.views(optimizer, saving=False)
    try:
        state = load_training_state(path, model=model, optimizer=opt, scheduler=scheduler)
    except CorruptCheckpoint as exc:
        best = path.parent / "best.safetensors"
        offer = (f" Its best weights so far, {best}, are intact: use them to start a new run "
                 f"(student.checkpoint={best}), or delete {path} to train this stage again." if _intact(best) else
                 f" Delete {path} to train this stage again.")
        raise CheckpointError(f"{exc}{offer}") from None
    if state["fingerprint"] != task.fingerprint:
        raise CheckpointError(f"{path} was written with different training settings or data (or by a version of "
                              "distill that described them differently); resume with the same config, or "
                              f"delete {path.parent} to restart this stage, or start a new run (another name / "
                              "output_dir).")
    result.history = state["history"]
    partial = state.get("partial") or {"sums": {}, "steps": 0}  # checkpoints from before it: none
    loop.sums = {k: torch.tensor(v, device=loop.acc.device) for k, v in partial["sums"].items()}
    loop.count = partial["steps"]
    return task.load_state(state, result)
