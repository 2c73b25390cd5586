"""The `distill run` job: data → teacher → baseline and distilled students → evaluation → report.

Each stage writes its files and then `<stage>/model.safetensors` last, so a resumed run skips
finished stages and continues an interrupted one from its last epoch checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
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
from distill.core.threads import choose_threads
from distill.data.arrays import DataSplits, check_labels, labels_of
from distill.data.batches import iter_batches
from distill.data.datasets import load_data
from distill.data.transfer import with_transfer_set
from distill.eval.bench import machine_description, measure_models, timing_notes
from distill.eval.doctor import diagnose
from distill.eval.figures import thumbnail
from distill.eval.metrics import classification_metrics, predict
from distill.eval.validate import validate
from distill.eval.verdict import compare_classifiers
from distill.losses.config import needs_live_teacher
from distill.losses.methods import CE, Method
from distill.models.ensemble import build_ensemble
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.choice import plan_of, save_resolved
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.out_of_fold import out_of_fold_signal
from distill.recipes.classify.pilot import adopt, slug
from distill.recipes.classify.plan import Candidate, Plan
from distill.recipes.classify.students import (
    baseline_budget,
    build_student,
    examples,
    fresh_student,
    stage_config,
)
from distill.teachers.output import Teacher
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.budget import fit_patiently, grows
from distill.training.classify import fit, kept_row
from distill.training.tracking import check_report_to


def run(cfg: RunConfig, resume: bool = False) -> Path:
    """Run the whole job; returns the run directory (which holds report.md)."""
    choose_threads()
    check_report_to(cfg.report_to)
    data = load_data(cfg.data)
    plan_of(cfg, data)  # a recipe the config cannot have is refused before any compute
    built = check_models(cfg, data)  # so is a wrong arch, kwargs or layer path
    run_dir = open_run_dir(cfg, resume)  # written only once the config and models are known to work
    started = time.perf_counter()
    teacher = load_or_train_teacher(cfg, data, run_dir, resume, built)
    taught = with_transfer_set(data.train, data.unlabeled)  # labelled ∪ unlabelled, built once
    recipe = plan_of(cfg, data, teacher, taught=taught, run_dir=run_dir)
    save_resolved(run_dir, cfg, recipe, data)
    students: dict[str, nn.Module] = {}
    if cfg.baseline:
        students["baseline"] = train_student(cfg, data, data.train, run_dir / "baseline", None, resume, teacher,
                                             recipe.baseline)
    signal = (out_of_fold_signal(cfg, data, teacher, taught, run_dir, resume) if cfg.teacher.out_of_fold
              else teacher_signal(cfg, teacher, taught, recipe))
    students["distilled"] = train_student(cfg, data, taught, run_dir / "distilled", signal, resume, teacher,
                                          recipe.distilled)
    repeats = more_seeds(cfg, data, taught, run_dir, signal, resume, teacher, recipe)
    if process_state(cfg.device).is_main_process and not cfg.keep_state:
        shutil.rmtree(run_dir / "pilot", ignore_errors=True)  # the paused candidates; pilot.json keeps the table
    if process_state(cfg.device).is_main_process:  # under torchrun, one process evaluates and reports
        # a live teacher ran channels-last (`training._fast_layout`); evaluate it in the layout it has
        # when the distilled stage is skipped on --resume, so a resumed run reports the same numbers
        teacher.to(memory_format=torch.contiguous_format)
        report = evaluate_run(cfg, data, teacher, students, repeats)
        report["recipe"] = describe(recipe, cfg, data, run_dir)
        report["timing"] = _timing(run_dir, time.perf_counter() - started, recipe)
        report["teacher_signal"] = teacher_confidence(teacher, data)
        report["loss_scale"] = _notes(run_dir / "distilled")
        report["doctor"] = diagnose(report)
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
        from distill.eval.report import render  # matplotlib is imported only when a report is drawn

        render(run_dir)
    return run_dir


def more_seeds(cfg: RunConfig, data: DataSplits, taught: Dataset, run_dir: Path, signal: Teacher | None,
               resume: bool, teacher: nn.Module, recipe: Plan) -> list[dict[str, nn.Module]]:
    """`seeds: N`: the plain and distilled students again with train.seed + 1 … + N − 1, the plan kept
    (the pilot ran once), each in its own stage directories (`baseline-seed1`, `distilled-seed1`, …)."""
    out = []
    for k in range(1, cfg.seeds):
        seeded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.train.seed + k})})
        pair = {}
        if cfg.baseline:
            pair["baseline"] = train_student(seeded, data, data.train, run_dir / f"baseline-seed{k}", None, resume,
                                             teacher, recipe.baseline, adopt_pilot=False)
        pair["distilled"] = train_student(seeded, data, taught, run_dir / f"distilled-seed{k}", signal, resume,
                                          teacher, recipe.distilled, adopt_pilot=False)
        out.append(pair)
    return out


def check_models(cfg: RunConfig, data: DataSplits) -> nn.Module | None:
    """Build the (untrained) teacher and the student now, so that a wrong `arch`, `kwargs` or layer
    path is reported before any training; returns the teacher built (None for an ensemble)."""
    if cfg.teacher.members:
        return None
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes, seed=cfg.teacher.train.seed)
    if cfg.teacher.checkpoint is not None:  # weights of another architecture fail now, leaving no run behind
        load_weights(cfg.teacher.checkpoint, teacher)
    student = build_student(cfg, data, teacher)  # seeded: the global RNG is left as it was
    if cfg.student.checkpoint is not None:
        load_weights(cfg.student.checkpoint, copy.deepcopy(student))
    if cfg.losses and any(needs_live_teacher(t) or t.kind != "kd" and t.kind != "ce" for t in cfg.losses):
        sample = next(iter_batches(data.train, torch.arange(min(2, len(data.train))), 2))["inputs"]  # type: ignore[arg-type]
        # every layer path of the losses list, and its shapes, checked on the untrained models
        Method(cfg.losses).bind(copy.deepcopy(student), copy.deepcopy(teacher).eval(), sample, cfg.train.seed)
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
              quiet=cfg.quiet, tracking=cfg.report_to, project=cfg.name, name="teacher")
    _save_stage(done, out.model, cfg)
    return freeze(out.model)


def describe(recipe: Plan, cfg: RunConfig, data: DataSplits, run_dir: Path) -> dict[str, Any]:
    """The recipe as the report shows it, with each student's budget and best validation row."""
    per_epoch = {"distilled": math.ceil(examples(data, taught=True) / cfg.train.batch_size),
                 "baseline": math.ceil(examples(data, taught=False) / cfg.train.batch_size)}
    planned = {"distilled": cfg.train.total_steps(per_epoch["distilled"]),
               "baseline": baseline_budget(cfg.train, data).total_steps(per_epoch["baseline"])}
    ran = {k: _trained_steps(run_dir / k) or planned[k] for k in planned}  # a default budget may have grown
    return {**recipe.to_dict(),
            **{f"{k}_steps": ran[k] for k in ran}, **{f"{k}_epochs": round(ran[k] / per_epoch[k], 2) for k in ran},
            "budget_notes": [n for k in ("baseline", "distilled") for n in _budget_notes(run_dir / k)],
            "distilled_best": _best_row(run_dir / "distilled", len(data.val)),  # type: ignore[arg-type]
            "out_of_fold": cfg.teacher.out_of_fold,
            **_tuned(run_dir / "distilled")}


def _timing(run_dir: Path, seconds: float, recipe: Plan) -> dict[str, Any]:
    """Wall time of this invocation (teacher to last student) and the pilot's share of it."""
    pilot = recipe.pilot["seconds"] if recipe.pilot else 0.0
    return {"job_seconds": seconds, "pilot_seconds": pilot, "pilot_share": pilot / seconds if seconds > 0 else 0.0}


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


def _rows(stage_dir: Path) -> list[dict[str, Any]]:
    """A stage's metrics rows (none before it trained)."""
    path = stage_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _trained_steps(stage_dir: Path) -> int | None:
    """The steps a finished stage ran: its last metrics row's (None without one)."""
    rows = _rows(stage_dir)
    return rows[-1].get("step") if rows else None


def _budget_notes(stage_dir: Path) -> list[str]:
    path = stage_dir / "budget.json"
    return json.loads(path.read_text())["notes"] if path.is_file() else []


def _best_row(stage_dir: Path, n_val: int) -> dict[str, Any] | None:
    """The validation row whose weights a finished stage kept, with how many rows it had."""
    rows = _rows(stage_dir)
    if not rows or "val_accuracy" not in rows[0]:
        return None
    i = kept_row(rows, n_val)
    return {"row": i, "rows": len(rows), "step": rows[i].get("step"), "epoch": rows[i]["epoch"]}


def _extended(cfg: RunConfig, data: DataSplits, stage_dir: Path, how: Candidate) -> bool:
    """Whether a finished stage is to train further: `--resume` with a larger budget, and the stage kept
    its training state (`keep_state`) to continue from; without it, a warning says why it cannot."""
    rows = stage_dir / "metrics.jsonl"
    last = [json.loads(line) for line in rows.read_text().splitlines() if line.strip()][-1:] if rows.is_file() else []
    n = examples(data, taught=how.taught)
    wanted = stage_config(cfg, data, how).total_steps(math.ceil(n / cfg.train.batch_size))
    if not last or "step" not in last[0] or last[0]["step"] >= wanted:
        return False
    if (stage_dir / "last.safetensors").is_file():
        (stage_dir / "model.safetensors").unlink()  # unfinished again until it reaches the new budget
        return True
    warnings.warn(f"{stage_dir.name}: finished at step {last[0]['step']} and kept no training state (keep_state is "
                  f"false), so it cannot continue to {wanted} steps; its weights are kept as they are. Run with "
                  "keep_state: true to extend a run later.", stacklevel=2)
    return False


def teacher_signal(cfg: RunConfig, teacher: nn.Module, taught: Dataset, recipe: Plan) -> Teacher:
    """The live teacher, or its logits cached over `taught` (what the distilled student trains on)."""
    if recipe.signal == "live":
        return LiveTeacher(teacher)
    with process_state(cfg.device).main_process_first():  # one process builds the cache, the others read it
        return CachedTeacher.build_or_load(teacher, taught, cfg.teacher.cache_dir,
                                           rebuild=cfg.teacher.cache_rebuild, quiet=cfg.quiet)


def train_student(cfg: RunConfig, data: DataSplits, train_data: Dataset, stage_dir: Path,
                  signal: Teacher | None, resume: bool, teacher: nn.Module, how: Candidate,
                  adopt_pilot: bool = True) -> nn.Module:
    """One student stage on `train_data`: plain (`signal` None, labelled examples only) or distilled
    (labelled ∪ unlabelled), trained as `how` says (objective, augmentation)."""
    done = stage_dir / "model.safetensors"
    if done.is_file() and not _extended(cfg, data, stage_dir, how):
        student = build_student(cfg, data, teacher)
        load_weights(done, student)
        _finished(done, cfg)
        return _to_device(student, cfg.device).eval()
    student = fresh_student(cfg, data, teacher)
    check_labels(train_data, data.num_classes, "data (student training)", unlabeled_ok=signal is not None)
    objective = how.objective if signal is not None else CE()
    if signal is not None and cfg.kd.tune is not None and how.recipe == "soft_targets":
        from distill.recipes.classify.tune import tune_kd  # optuna is imported only when asked for

        objective = tune_kd(cfg.kd.tune, lambda: fresh_student(cfg, data, teacher), train_data, data.val,
                            config=stage_config(cfg, data, how), num_classes=data.num_classes, teacher=signal,
                            stage_dir=stage_dir, device=cfg.device, quiet=cfg.quiet)
    pilot_dir = stage_dir.parent / "pilot" / slug(how.name)
    if process_state(cfg.device).is_main_process and adopt_pilot:
        adopt(pilot_dir, stage_dir)  # a pilot candidate's paused run continues as this stage
    process_state(cfg.device).wait_for_everyone()
    config = stage_config(cfg, data, how)
    n_val, steps = len(data.val), config.total_steps(math.ceil(examples(data, taught=how.taught) / config.batch_size))
    out, notes, warned = fit_patiently(  # a budget the config does not give grows while validation still rises
        lambda upto, again: fit(student, train_data, objective=copy.deepcopy(objective),
                                config=config if upto == steps else config.with_steps(upto),
                                num_classes=data.num_classes, teacher=signal, val_data=data.val,
                                checkpoint_dir=stage_dir, resume=again, device=cfg.device, quiet=cfg.quiet,
                                tracking=cfg.report_to, project=cfg.name, name=stage_dir.name),
        steps,
        grow=grows(cfg.train, n_val), n_val=n_val, name=stage_dir.name,
        resume=resume or (stage_dir / "last.safetensors").is_file())
    for note in notes + warned:
        warnings.warn(note, stacklevel=2)
    if process_state(cfg.device).is_main_process:  # the report says how far the budget grew
        atomic_write_text(stage_dir / "budget.json", json.dumps({"notes": notes + warned}))
    _save_stage(done, out.model, cfg)
    return out.model


def evaluate_run(cfg: RunConfig, data: DataSplits, teacher: nn.Module, students: dict[str, nn.Module],
                 repeats: list[dict[str, nn.Module]] | None = None) -> dict[str, Any]:
    """Test metrics and costs of every model, the ratios that summarise them, each student's validation
    against the teacher (`distill.eval.validate`), and the verdict of the paired test over the test
    examples and every seed (`repeats`: the students of the other seeds, scored for accuracy only)."""
    t_logits = predict(teacher, data.test)
    everyone = {"teacher": teacher, **students}
    costs = measure_models({k: _cpu_copy(m) for k, m in everyone.items()}, data.input_shape,
                           threads=cfg.bench.threads, batch=cfg.bench.throughput_batch,
                           repeats=cfg.bench.repeats)
    labels = labels_of(data.test)
    models: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    correct: dict[str, torch.Tensor] = {}
    for name, model in everyone.items():
        if name == "teacher":
            metrics = classification_metrics(t_logits, labels)
        else:
            s_logits = predict(model, data.test)
            metrics = classification_metrics(s_logits, labels, t_logits)
            validation[name] = _with_inputs(validate(t_logits, s_logits, labels).to_dict(), data,
                                            pictures=name == "distilled")
            correct[name] = s_logits.argmax(-1) == labels
        models[name] = {**metrics, **costs[name]}
    per_seed = [correct] + [{k: predict(m, data.test).argmax(-1) == labels for k, m in pair.items()}
                            for pair in repeats or []]
    verdict = (compare_classifiers(torch.stack([c["baseline"] for c in per_seed]),
                                   torch.stack([c["distilled"] for c in per_seed])).to_dict()
               if "baseline" in correct else None)
    seeds = {k: [float(c[k].float().mean()) for c in per_seed] for k in correct} if repeats else None
    return {
        "name": cfg.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(cfg.bench.threads),
        "threads": choose_threads(),
        "dataset": {"name": cfg.data.title, "train": len(data.train), "val": len(data.val),
                    "test": len(data.test), "classes": data.class_names,
                    "unlabeled": len(data.unlabeled) if data.unlabeled is not None else 0},  # type: ignore[arg-type]
        "models": models,
        "summary": summarise(models),
        "verdict": verdict,
        "seeds": seeds,
        "sanity": sanity_notes(models, data),
        "timing_notes": timing_notes(costs),
        "validation": validation,
    }


SMALL_VALIDATION = 200  # examples: below this, one example moves validation accuracy by over half a point


def sanity_notes(models: dict[str, Any], data: DataSplits) -> list[str]:
    """What a reader should know before trusting the numbers: a validation split too small to choose
    epochs or recipes, a student far behind its teacher."""
    notes = []
    n_val = len(data.val)  # type: ignore[arg-type]
    if n_val < SMALL_VALIDATION:
        notes.append(f"The validation split has {n_val} examples (one example is {100 / max(1, n_val):.1f} points): "
                     "too few to choose epochs or recipes reliably; give more (data.val_fraction, data.val_path).")
    t = models["teacher"]["accuracy"]
    for name in ("baseline", "distilled"):
        if name in models and t > 0 and models[name]["accuracy"] < 0.5 * t:
            notes.append(f"The {name} student's test accuracy ({100 * models[name]['accuracy']:.1f}%) is under "
                         f"half the teacher's ({100 * t:.1f}%): check its budget (train.steps) and size.")
    return notes


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


def _with_inputs(validation: dict[str, Any], data: DataSplits, shown: int = 10, pictures: bool = True
                 ) -> dict[str, Any]:
    """The first `shown` disagreements with their inputs as a person reads them: a text's words, and
    with `pictures` an image's or spectrogram's thumbnail (the report draws the distilled student's)."""
    describe = getattr(data.prepare, "describe", None)
    for row in validation["disagreements"][:shown]:
        x = data.test[row["index"]]["inputs"]
        if describe is not None:
            row["input"] = describe(x)
        elif pictures and data.modality in ("images", "audio") and (small := thumbnail(x)) is not None:
            row["thumbnail"] = small
    return validation
