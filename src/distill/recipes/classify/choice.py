"""Which recipe a `distill run` job trains its students with (`distill.recipes.classify.plan`): the one the
config names, or with `recipe: auto` the pilot's choice (`distill.recipes.classify.pilot`), written back
into the run's `config.yaml` as the config that ran."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from torch import nn
from torch.utils.data import Dataset

from distill.core.distributed import process_state
from distill.core.files import atomic_write_text
from distill.data.arrays import DataSplits
from distill.losses.config import needs_live_teacher
from distill.losses.methods import CE, Method
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.pilot import measure, plan_from
from distill.recipes.classify.plan import (
    Candidate,
    Plan,
    candidates,
    chosen,
    plain_candidate,
    with_signal,
)
from distill.recipes.classify.students import examples, fresh_student, stage_config


def plan_of(cfg: RunConfig, data: DataSplits, teacher: nn.Module | None = None, *, taught: Dataset | None = None,
            run_dir: Path | None = None) -> Plan:
    """The run's recipe resolved for its data (`distill.recipes.classify.plan`). With `recipe: auto`
    and a teacher, the pilot measures the candidates (`distill.recipes.classify.pilot`; its rows kept
    in `run_dir/pilot.json`, so a resumed run re-trains none); without a teacher yet, a provisional
    plan that only checks the config."""
    live_needed = cfg.teacher.combine == "correctness" or any(needs_live_teacher(t) for t in cfg.losses)
    signal = "cached" if cfg.teacher.out_of_fold is not None else cfg.teacher.signal  # fixed targets per example
    method = Method(cfg.losses) if cfg.losses else None
    if not _piloted(cfg):
        recipe = "soft_targets" if cfg.recipe == "auto" else cfg.recipe
        distilled = with_signal(chosen(recipe, signal, cfg.train.augment, data.modality, data.input_shape,
                                       method=method, kd=cfg.kd, live_needed=live_needed), signal, live_needed)
        aug = cfg.pilot.baseline_augment or (cfg.train.augment if cfg.recipe == "auto" else distilled.augment)
        why = (f"{distilled.name} (chosen in the config)" if cfg.recipe != "auto" else
               f"{distilled.name} (auto without a pilot: {_no_pilot_reason(cfg)})")
        return Plan(distilled, plain_candidate(aug), why)
    cands = [with_signal(c, signal, live_needed) for c in candidates(
        data.modality, data.input_shape, kd=cfg.kd, augment=cfg.train.augment, live_ok=signal != "cached",
        extra=[_candidate(c, cfg, data) for c in cfg.pilot.candidates])]
    if teacher is None or run_dir is None:
        return Plan(cands[-1], cands[0], "provisional: the pilot has not run")
    path = run_dir / "pilot.json"
    done = json.loads(path.read_text())["rows"] if path.is_file() else None
    n_all = len(taught if taught is not None else data.train)  # type: ignore[arg-type]
    steps = cfg.train.total_steps(math.ceil(n_all / cfg.train.batch_size))
    main = process_state(cfg.device).is_main_process
    result = measure(cands, build=lambda: fresh_student(cfg, data, teacher), labelled=data.train,
                     taught=taught if taught is not None else data.train, val=data.val, teacher=teacher,
                     config_for=lambda c: stage_config(cfg, data, c), num_classes=data.num_classes,
                     job_steps=steps * (2 if cfg.baseline else 1), total=steps, share=cfg.pilot.share,
                     directory=run_dir / "pilot", device=cfg.device, done=done, quiet=cfg.quiet,
                     record=(lambda rows: atomic_write_text(path, json.dumps({"rows": rows}, indent=2))) if main
                     else None)
    return plan_from(cands, result)


def _piloted(cfg: RunConfig) -> bool:
    return (cfg.recipe == "auto" and not cfg.losses and cfg.kd.tune is None and cfg.teacher.out_of_fold is None
            and cfg.pilot.share > 0)


def _no_pilot_reason(cfg: RunConfig) -> str:
    if cfg.kd.tune is not None:
        return "kd.tune chooses the temperature and ratio of soft targets"
    if cfg.teacher.out_of_fold is not None:
        return "teacher.out_of_fold gives fixed soft targets per example"
    if cfg.losses:
        return "the losses list is the method"
    return "pilot.share is 0"


def _candidate(c: Any, cfg: RunConfig, data: DataSplits) -> Candidate:
    """A `pilot.candidates` entry as a candidate."""
    kd = cfg.kd.model_copy(update={k: v for k, v in (("temperature", c.temperature), ("ratio", c.ratio))
                                   if v is not None})
    if c.recipe == "plain":
        return Candidate(c.name, "plain", CE(), c.augment.filled())
    base = chosen(c.recipe, "auto", c.augment, data.modality, data.input_shape, kd=kd)
    return Candidate(c.name, c.recipe, base.objective, base.augment, base.signal)


def save_resolved(run_dir: Path, cfg: RunConfig, recipe: Plan, data: DataSplits) -> None:
    """`config.yaml` becomes the config that ran: the recipe, objective, augmentation and budget the plan
    chose written in, so running it again repeats the students without a pilot (the request stays in
    `request.yaml`, which `--resume` compares against)."""
    if not process_state(cfg.device).is_main_process:
        return
    spe = math.ceil(examples(data, taught=True) / cfg.train.batch_size)
    raw = cfg.model_dump(mode="json")
    if recipe.recipe in ("soft_targets", "function_matching") and not cfg.losses:
        kd = recipe.objective.terms[0]
        raw["recipe"] = recipe.recipe
        if kd.kind == "kd" and not cfg.kd.tune:
            raw["kd"].update({k: v.model_dump() if hasattr(v, "model_dump") else v
                              for k, v in (("temperature", kd.temperature), ("ratio", kd.weight))})
        if cfg.teacher.signal == "auto" and cfg.teacher.out_of_fold is None:
            raw["teacher"]["signal"] = recipe.signal
    raw["train"]["augment"] = recipe.augment.model_dump()
    if cfg.train.epochs is None and cfg.train.steps is None:
        raw["train"]["steps"] = cfg.train.total_steps(spe)
    raw["pilot"]["baseline_augment"] = recipe.baseline.augment.model_dump()
    if recipe.pilot is not None:
        raw["pilot"]["share"] = 0.0  # chosen: running this config again trains the chosen recipe directly
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
