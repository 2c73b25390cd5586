"""The `distill run` job: data → teacher → baseline and distilled students → evaluation → report.

Each stage writes its files and then `<stage>/model.safetensors` last, so a resumed run skips
finished stages and continues an interrupted one from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.core.checkpoint import drop_training_state, load_weights, save_weights
from distill.core.distributed import process_state
from distill.core.files import atomic_write_text
from distill.core.rundir import open_run_dir
from distill.data.arrays import DataSplits, check_labels, labels_of
from distill.data.datasets import load_data
from distill.data.transfer import with_transfer_set
from distill.eval.bench import machine_description, measure_models
from distill.eval.doctor import diagnose
from distill.eval.metrics import classification_metrics, mean_confidence, predict
from distill.eval.validate import validate
from distill.losses.methods import CE
from distill.models.ensemble import build_ensemble
from distill.models.students import every_kth, keep_layers
from distill.models.taps import resolve_module
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.out_of_fold import out_of_fold_signal
from distill.recipes.classify.plan import CONFIDENCE_SAMPLE, Plan, plan
from distill.teachers.output import Teacher
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import best_key, fit
from distill.training.config import TrainConfig


def run(cfg: RunConfig, resume: bool = False) -> Path:
    """Run the whole job; returns the run directory (which holds report.md)."""
    data = load_data(cfg.data)
    plan_of(cfg, data)  # a recipe the config cannot have is refused before any compute
    built = check_models(cfg, data)  # so is a wrong arch, kwargs or layer path
    run_dir = open_run_dir(cfg, resume)  # written only once the config and models are known to work
    teacher = load_or_train_teacher(cfg, data, run_dir, resume, built)
    recipe = plan_of(cfg, data, teacher)
    students: dict[str, nn.Module] = {}
    if cfg.baseline:
        students["baseline"] = train_student(cfg, data, data.train, run_dir / "baseline", None, resume, teacher,
                                             recipe)
    taught = with_transfer_set(data.train, data.unlabeled)  # labelled ∪ unlabelled, built once
    signal = (out_of_fold_signal(cfg, data, teacher, taught, run_dir, resume) if cfg.teacher.out_of_fold
              else teacher_signal(cfg, teacher, taught, recipe))
    students["distilled"] = train_student(cfg, data, taught, run_dir / "distilled", signal, resume, teacher,
                                          recipe)
    if process_state(cfg.device).is_main_process:  # under torchrun, one process evaluates and reports
        # a live teacher ran channels-last (`training._fast_layout`); evaluate it in the layout it has
        # when the distilled stage is skipped on --resume, so a resumed run reports the same numbers
        teacher.to(memory_format=torch.contiguous_format)
        report = evaluate_run(cfg, data, teacher, students)
        report["recipe"] = describe(recipe, cfg, data, run_dir)
        report["teacher_signal"] = teacher_confidence(teacher, data)
        report["loss_scale"] = _notes(run_dir / "distilled")
        report["doctor"] = diagnose(report)
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
        from distill.eval.report import render  # matplotlib is imported only when a report is drawn

        render(run_dir)
    return run_dir


def check_models(cfg: RunConfig, data: DataSplits) -> nn.Module | None:
    """Build the (untrained) teacher and the student now, so that a wrong `arch`, `kwargs` or layer
    path is reported before any training; returns the teacher built (None for an ensemble)."""
    if cfg.teacher.members:
        return None
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes, seed=cfg.teacher.train.seed)
    build_student(cfg, data, teacher)  # seeded: the global RNG is left as it was
    return teacher


def load_or_train_teacher(cfg: RunConfig, data: DataSplits, run_dir: Path, resume: bool,
                          built: nn.Module | None = None) -> nn.Module:
    """The teacher: an ensemble, given weights, this run's trained teacher, or trained now.
    `built`: the untrained teacher `check_models` already built (not built again)."""
    t = cfg.teacher
    if t.members:
        ensemble = build_ensemble(t.members, data.input_shape, data.num_classes, t.combine, t.weights)
        return _to_device(ensemble, cfg.device)
    teacher = built if built is not None else build_model(cfg.teacher, data.input_shape, data.num_classes,
                                                          seed=cfg.teacher.train.seed)
    if cfg.teacher.checkpoint is not None:
        load_weights(cfg.teacher.checkpoint, teacher)
        return freeze(_to_device(teacher, cfg.device))
    done = run_dir / "teacher" / "model.safetensors"
    if done.is_file():
        load_weights(done, teacher)
        _finished(done, cfg)  # a run killed right after the weights were written
        return freeze(_to_device(teacher, cfg.device))
    check_labels(data.train, data.num_classes, "data (teacher training)")
    out = fit(teacher, data.train, objective=CE(), config=cfg.teacher.train, num_classes=data.num_classes,
              val_data=data.val, checkpoint_dir=run_dir / "teacher", resume=resume, device=cfg.device,
              quiet=cfg.quiet, tracking=cfg.tracking, name="teacher")
    _save_stage(done, out.model, cfg)
    return freeze(out.model)


def plan_of(cfg: RunConfig, data: DataSplits, teacher: nn.Module | None = None) -> Plan:
    """The run's recipe resolved for its data (`distill.recipes.classify.plan`) and, where `auto` asks, its teacher."""
    measure = (lambda: mean_confidence(teacher, data.train, CONFIDENCE_SAMPLE)) if teacher is not None else None
    return plan(cfg, data.modality, data.input_shape, transfer_set=data.unlabeled is not None, confidence=measure)


def describe(recipe: Plan, cfg: RunConfig, data: DataSplits, run_dir: Path) -> dict[str, Any]:
    """The recipe as the report shows it, with each student's budget and best epoch."""
    return {"recipe": recipe.recipe, "why": recipe.why, "signal": recipe.signal,
            "augment": recipe.augment.model_dump(), "objective": recipe.objective.describe(),
            "distilled_epochs": cfg.train.epochs, "baseline_epochs": baseline_budget(cfg.train, data).epochs,
            "distilled_best_epoch": _best_epoch(run_dir / "distilled"), "out_of_fold": cfg.teacher.out_of_fold,
            **_tuned(run_dir / "distilled")}


def _tuned(stage_dir: Path) -> dict[str, Any]:
    """The tuner's sweep and choice, when `kd.tune` ran."""
    path = stage_dir / "kd_tune.json"
    if not path.is_file():
        return {}
    trials = json.loads(path.read_text())["trials"]
    best = max(trials, key=lambda r: r["score"])
    return {"objective": f"KD(temperature={best['temperature']:.3g}, ratio={best.get('ratio', best.get('alpha')):.3g}) (kd.tune)",
            "kd_tune": trials}


def teacher_confidence(teacher: nn.Module, data: DataSplits) -> dict[str, float]:
    """How soft the teacher's targets are where it was trained and where it was not: mean top-1
    probability and entropy (nats) on the labelled training and the validation examples."""
    out: dict[str, float] = {}
    for split, ds in (("train", data.train), ("val", data.val)):
        probs = predict(teacher, ds).float().softmax(-1)
        out[f"{split}_confidence"] = float(probs.max(-1).values.mean())
        out[f"{split}_entropy"] = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
    return out


def _notes(stage_dir: Path) -> list[str]:
    path = stage_dir / "notes.json"
    return json.loads(path.read_text()).get("loss_scale", []) if path.is_file() else []


def _best_epoch(stage_dir: Path) -> int | None:
    """The epoch whose weights a finished stage kept (its best validation epoch)."""
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or "val_accuracy" not in rows[0]:
        return None
    best = max(rows, key=best_key)
    return int(best["epoch"])


def teacher_signal(cfg: RunConfig, teacher: nn.Module, taught: Dataset, recipe: Plan) -> Teacher:
    """The live teacher, or its logits cached over `taught` (what the distilled student trains on)."""
    if recipe.signal == "live":
        return LiveTeacher(teacher)
    with process_state(cfg.device).main_process_first():  # one process builds the cache, the others read it
        return CachedTeacher.build_or_load(teacher, taught, cfg.teacher.cache_dir,
                                           rebuild=cfg.teacher.cache_rebuild, quiet=cfg.quiet)


def train_student(cfg: RunConfig, data: DataSplits, train_data: Dataset, stage_dir: Path,
                  signal: Teacher | None, resume: bool, teacher: nn.Module, recipe: Plan) -> nn.Module:
    """One student stage on `train_data`: plain (`signal` None, labelled examples only) or distilled
    (labelled ∪ unlabelled)."""
    student = build_student(cfg, data, teacher)
    done = stage_dir / "model.safetensors"
    if done.is_file():
        load_weights(done, student)
        _finished(done, cfg)
        return _to_device(student, cfg.device).eval()
    if cfg.student.checkpoint is not None:
        load_weights(cfg.student.checkpoint, student)
    check_labels(train_data, data.num_classes, "data (student training)", unlabeled_ok=signal is not None)
    objective = recipe.objective if signal is not None else CE()
    train = cfg.train.model_copy(update={"augment": recipe.augment})
    if signal is not None and cfg.kd.tune is not None and recipe.recipe == "soft_targets":
        from distill.recipes.classify.tune import tune_kd  # optuna is imported only when asked for

        objective = tune_kd(cfg.kd.tune, lambda: build_student(cfg, data, teacher), train_data, data.val,
                            config=train, num_classes=data.num_classes, teacher=signal, stage_dir=stage_dir,
                            device=cfg.device, quiet=cfg.quiet)
    budget = train if signal is not None else baseline_budget(train, data)
    out = fit(student, train_data, objective=objective, config=budget, num_classes=data.num_classes,
              teacher=signal, val_data=data.val, checkpoint_dir=stage_dir, resume=resume,
              device=cfg.device, quiet=cfg.quiet, tracking=cfg.tracking, name=stage_dir.name)
    _save_stage(done, out.model, cfg)
    return out.model


def baseline_budget(train: TrainConfig, data: DataSplits) -> TrainConfig:
    """The plain student's training settings: as many optimizer steps as the distilled student takes.
    With a transfer set, an epoch over the labelled examples alone is shorter, so the baseline gets
    proportionally more epochs (its best validation epoch is kept, so a longer run cannot hurt it)."""
    n_labelled = len(data.train)  # type: ignore[arg-type]
    n_all = n_labelled + (len(data.unlabeled) if data.unlabeled is not None else 0)  # type: ignore[arg-type]
    steps = train.epochs * math.ceil(n_all / train.batch_size)
    per_epoch = math.ceil(n_labelled / train.batch_size)
    epochs = math.ceil(steps / per_epoch)
    if epochs == train.epochs:
        return train
    return train.model_copy(update={"epochs": epochs, "warmup_epochs": train.warmup_epochs * epochs / train.epochs})


def build_student(cfg: RunConfig, data: DataSplits, teacher: nn.Module) -> nn.Module:
    """The student of the config: a model of its own, or the teacher with fewer layers (trainable)."""
    spec = cfg.student.from_teacher
    if spec is None:
        return build_model(cfg.student, data.input_shape, data.num_classes, seed=cfg.train.seed)
    container = resolve_module(teacher, spec.path, "student.from_teacher.path")
    layers = spec.layers if spec.layers is not None else every_kth(len(container), spec.every or 1)
    student = keep_layers(teacher, spec.path, layers)
    for p in student.parameters():
        p.requires_grad_(True)
    return student.train()


def evaluate_run(cfg: RunConfig, data: DataSplits, teacher: nn.Module,
                 students: dict[str, nn.Module]) -> dict[str, Any]:
    """Test metrics and costs of every model, the ratios that summarise them, and each student's
    validation against the teacher (`distill.eval.validate`)."""
    t_logits = predict(teacher, data.test)
    everyone = {"teacher": teacher, **students}
    costs = measure_models({k: _cpu_copy(m) for k, m in everyone.items()}, data.input_shape,
                           threads=cfg.bench.threads, batch=cfg.bench.throughput_batch,
                           repeats=cfg.bench.repeats)
    labels = labels_of(data.test)
    models: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    for name, model in everyone.items():
        if name == "teacher":
            metrics = classification_metrics(t_logits, labels)
        else:
            s_logits = predict(model, data.test)
            metrics = classification_metrics(s_logits, labels, t_logits)
            validation[name] = validate(t_logits, s_logits, labels).to_dict()
        models[name] = {**metrics, **costs[name]}
    return {
        "name": cfg.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(cfg.bench.threads),
        "dataset": {"name": cfg.data.title, "train": len(data.train), "val": len(data.val),
                    "test": len(data.test), "classes": data.class_names,
                    "unlabeled": len(data.unlabeled) if data.unlabeled is not None else 0},  # type: ignore[arg-type]
        "models": models,
        "summary": summarise(models),
        "validation": validation,
    }


def summarise(models: dict[str, Any]) -> dict[str, float]:
    t, s = models["teacher"], models["distilled"]
    out = {
        "compression": t["params"] / s["params"],
        "speedup_b1": t["latency_b1_p50_ms"] / s["latency_b1_p50_ms"],
        "throughput_ratio": s["throughput"] / t["throughput"],
        "retention": s["accuracy"] / t["accuracy"],
    }
    if "baseline" in models:
        gap = t["accuracy"] - models["baseline"]["accuracy"]
        out["gap_closed"] = (s["accuracy"] - models["baseline"]["accuracy"]) / gap if gap > 0 else float("nan")
    return out


def _save_stage(path: Path, model: nn.Module, cfg: RunConfig) -> None:
    """Mark a stage finished by writing its final weights (once, by the main process), then drop its
    training state unless `keep_state`."""
    state = process_state()
    if state.is_main_process:
        save_weights(path, model, {"stage": path.parent.name})
    _finished(path, cfg)


def _finished(path: Path, cfg: RunConfig) -> None:
    state = process_state()
    if state.is_main_process:
        drop_training_state(path.parent, keep=cfg.keep_state)
    state.wait_for_everyone()


def _to_device(model: nn.Module, device: str) -> nn.Module:
    return model.to(process_state(device).device)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """Latency is reported on CPU (the deployment target named in the report)."""
    import copy

    return copy.deepcopy(model).cpu().float().eval()
