"""The pilot: `recipe: auto` measures its candidates before committing to one, and the best on
validation wins.

Successive halving (Jamieson & Talwalkar 2016) with continuation: every candidate starts the full
run's schedule from the same initial student, is paused after r steps and scored on validation; the
best third (at least two) continue to 3r, with each group's default (plain training; soft targets at
T = 2, ratio 0.5), and so on while that drops anyone. The best candidate using the teacher continues
to the end as the distilled student, the best plain one as the baseline; a default is replaced only
by a candidate better by more than one standard error of validation accuracy (the one-standard-error
rule), so a small validation split does not trade a robust recipe for a lucky one. The winners' pilot
steps are part of their own runs, so the pilot costs only the steps of the candidates that were
dropped; r is set so that those are at most `share` of all the job's student steps, the pilot's
included (`pilot_budget`), each candidate's steps weighed by its measured cost (`step_costs`: a live
teacher, augmentation), and a next rung whose worst case would pass that share is not run (`within`:
when the best third and the defaults overlap, more rungs run than r assumed). Pausing and continuing
is the engine's resume (`fit(stop_at=)`), bit for bit.

Hand-written rather than Optuna's SuccessiveHalvingPruner: that pruner is asynchronous (it prunes a
trial against those that reached a rung before it), which suits a sampler's stream of trials, not a
fixed list of recipes compared at equal budgets; the loop here is 30 lines and keeps the table the
report shows.

Scores are the mean validation accuracy (then lower NLL) over the rows of the last third of the steps
so far: a smoother measure than any single row on a small validation split.
Each candidate's rows are recorded as they finish (`record`), so a resumed job re-trains none.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.core.files import atomic_write_text
from distill.eval.metrics import predict
from distill.recipes.classify.plan import Candidate, Plan
from distill.teachers.output import Teacher
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

ETA = 3  # each rung keeps the best third (at least two) and triples the budget
MIN_RUNG_STEPS = 10


@dataclass
class Pilot:
    """The pilot's table: every candidate's score at every rung it reached, and what won."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # {name, recipe, rung, steps, val_accuracy, ...}
    seconds: float = 0.0  # training of the candidates that were dropped: the pilot's cost to the job
    winner: str | None = None  # the best candidate that uses the teacher
    best_plain: str | None = None  # the best plain candidate (the baseline's settings)
    plain_won: bool = False  # whether a plain candidate scored above every candidate using the teacher
    skipped: list[str] = field(default_factory=list)  # candidates too costly to measure within the share

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "seconds": self.seconds, "winner": self.winner, "best_plain": self.best_plain,
                "plain_won": self.plain_won, "skipped": self.skipped}


Trainer = Callable[[Candidate, int], dict[str, float]]  # (candidate, steps so far) -> {val_accuracy, val_nll}


def pilot_budget(job_steps: int, costs: list[float], share: float) -> int:
    """The first rung's steps r: the dropped candidates' steps, each weighed by its cost relative to the
    cheapest candidate's (a live teacher's forward and augmentation add to a step), are at most `share`
    of the job's student steps plus the pilot's own (pilot ≤ share / (1 − share) · job), whichever candidates are
    dropped."""
    allowed, units = share / (1 - share) * job_steps, dropped_units(costs)
    return max(MIN_RUNG_STEPS, int(allowed / units)) if units > 0 else MIN_RUNG_STEPS  # 0: nothing to drop


def affordable(cands: list[Candidate], costs: list[float], job_steps: int,
               share: float) -> tuple[list[Candidate], list[float], list[str]]:
    """The candidates the pilot can measure within `share` of a job of `job_steps` steps: while even a
    first rung of `MIN_RUNG_STEPS` would overrun it, the costliest candidate that is dearer than a plain
    step (a live teacher's, an augmented one's) and no group's default is left out. Returns the
    candidates kept, their costs, and the names left out in the candidates' order (a short job cannot afford to try function
    matching's live teacher)."""
    allowed = share / (1 - share) * job_steps
    kept, defaults, skipped = list(zip(cands, costs)), _defaults(cands), []
    while allowed < MIN_RUNG_STEPS * dropped_units([k for _, k in kept]):
        dear = [(c, k) for c, k in kept if k > 1 and c not in defaults]
        if not dear:
            break
        worst = max(dear, key=lambda ck: ck[1])
        kept.remove(worst)
        skipped.append(worst[0])
    return [c for c, _ in kept], [k for _, k in kept], [c.name for c in cands if c in skipped]


def dropped_units(costs: list[float], defaults: int = 2) -> float:
    """At most the cost of the steps successive halving drops, in units of r steps of the cheapest
    candidate: every candidate but the two that continue (the best taught and the best plain), the
    costliest dropped first, the `defaults` kept at every rung besides the best third."""
    left, units, budget = sorted(costs, reverse=True), 0.0, 1
    while True:
        keep = min(len(left), max(2, math.ceil(len(left) / ETA)) + defaults)
        if keep == len(left):
            return units + budget * sum(left[:max(0, len(left) - 2)])
        units += budget * sum(left[:len(left) - keep])
        left, budget = left[len(left) - keep:], budget * ETA


def run_pilot(cands: list[Candidate], train: Trainer, first_rung: int, total: int | None = None,
              done: list[dict[str, Any]] | None = None, record: Callable[[list[dict[str, Any]]], None] | None = None,
              progress: Callable[[str], None] | None = None, n_val: int | None = None,
              costs: list[float] | None = None, allowed: float | None = None) -> Pilot:
    """Successive halving over `cands`, the first rung after `first_rung` steps (never past `total`).
    The first plain candidate and the first using the teacher are each group's default: they go on to
    every rung, and another candidate replaces its group's default only when it scores higher by more
    than one standard error of validation accuracy over `n_val` examples (the one-standard-error rule:
    on 28 validation images, 6 points). `done`: rows of an interrupted pilot (not trained again);
    `record(rows)` after each candidate. With `costs` (each candidate's cost per step, in plain steps)
    and `allowed` (plain steps), a next rung whose worst case would take the dropped candidates' steps
    past `allowed` is not run: the candidates are decided where they stand (`within`)."""
    pilot = Pilot(rows=list(done or []))
    defaults = _defaults(cands)
    cost = dict(zip((c.name for c in cands), costs or [1.0] * len(cands)))
    alive, upto, rung = list(cands), first_rung, 0
    while True:
        upto = min(upto, total) if total else upto
        for c in alive:
            if not any(r["name"] == c.name and r["rung"] == rung for r in pilot.rows):
                t0 = time.perf_counter()
                score = train(c, upto)
                pilot.rows.append({"name": c.name, "recipe": c.recipe, "rung": rung, "steps": upto,
                                   "val_accuracy": score["val_accuracy"], "val_nll": score["val_nll"],
                                   "seconds": time.perf_counter() - t0})
                if record is not None:
                    record(pilot.rows)
                if progress is not None:
                    progress(f"pilot: {c.name}, {upto} steps: validation accuracy {100 * score['val_accuracy']:.2f}%")
        ranked = sorted(alive, key=lambda c: _key(pilot.rows, c.name, rung), reverse=True)
        keep = [c for c in alive if c in ranked[:max(2, math.ceil(len(alive) / ETA))] or c in defaults]
        if len(keep) == len(alive) or (total is not None and upto >= total):
            break
        nxt = min(upto * ETA, total) if total else upto * ETA
        if allowed is not None and not within(pilot.rows, [c.name for c in keep], cost, nxt, allowed):
            break
        alive, upto, rung = keep, nxt, rung + 1
    _decide(pilot, cands, defaults, n_val)
    kept = {pilot.winner, pilot.best_plain}
    pilot.seconds = sum(r["seconds"] for r in pilot.rows if r["name"] not in kept)
    return pilot


def within(rows: list[dict[str, Any]], going_on: list[str], cost: dict[str, float], upto: int,
           allowed: float) -> bool:
    """Whether a next rung of `upto` steps for the candidates `going_on` keeps the pilot's worst case
    within `allowed` plain steps: those stopped so far (the steps they ran × their cost per step) and
    every one going on but the two cheapest, dropped after `upto` steps."""
    reached: dict[str, int] = {}
    for r in rows:
        reached[r["name"]] = max(reached.get(r["name"], 0), r["steps"])
    stopped = sum(cost[n] * steps for n, steps in reached.items() if n not in going_on)
    going = sorted((cost[n] for n in going_on), reverse=True)
    return stopped + upto * sum(going[:max(0, len(going) - 2)]) <= allowed


def _key(rows: list[dict[str, Any]], name: str, rung: int) -> tuple[float, float]:
    row = next(r for r in rows if r["name"] == name and r["rung"] == rung)
    return row["val_accuracy"], -row["val_nll"]


def _defaults(cands: list[Candidate]) -> list[Candidate]:
    """Each group's default: the first plain candidate and the first using the teacher."""
    return [c for group in ([c for c in cands if not c.taught], [c for c in cands if c.taught]) for c in group[:1]]


def _decide(pilot: Pilot, cands: list[Candidate], defaults: list[Candidate], n_val: int | None) -> None:
    """The winner among the teacher's candidates and the best plain one: each ranked by the deepest rung
    it reached, then its score there; a group's default stands unless beaten by more than one standard
    error (it reaches every rung, so it is scored where the others are)."""
    def rank(c: Candidate) -> tuple[int, float, float]:
        deepest = max(r["rung"] for r in pilot.rows if r["name"] == c.name)
        return (deepest, *_key(pilot.rows, c.name, deepest))

    def pick(group: list[Candidate]) -> Candidate | None:
        if not group:
            return None
        best = max(group, key=rank)
        default = next((c for c in defaults if c in group), best)
        b, d = rank(best), rank(default)
        margin = math.sqrt(b[1] * (1 - b[1]) / n_val) if n_val else 0.0
        return default if b[0] == d[0] and b[1] - d[1] <= margin else best

    best_taught = pick([c for c in cands if c.taught])
    best_plain = pick([c for c in cands if not c.taught])
    pilot.winner = best_taught.name if best_taught else None
    pilot.best_plain = best_plain.name if best_plain else None
    if best_taught is not None and best_plain is not None:
        pilot.plain_won = rank(best_plain) > rank(best_taught)


def slug(name: str) -> str:
    """A candidate's name as a directory name."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-") or "candidate"


def measure(cands: list[Candidate], *, build: Callable[[], nn.Module], labelled: Dataset, taught: Dataset,
            val: Dataset, teacher: nn.Module, config_for: Callable[[Candidate], TrainConfig], num_classes: int,
            job_steps: int, total: int, share: float, directory: Path, device: str = "auto",
            done: list[dict[str, Any]] | None = None, record: Callable[[list[dict[str, Any]]], None] | None = None,
            quiet: bool = False) -> Pilot:
    """Run the pilot over `cands` for a job of `job_steps` student steps, `total` of them per student:
    plain candidates train on `labelled`, the teacher's on `taught` (labelled ∪ unlabelled), every one
    from `build()` with its own full-run settings (`config_for`), paused and resumed in
    `directory/<candidate>` and scored on `val`. A cached candidate reads the teacher's logits computed
    once, in memory."""
    table: list[Teacher] = []

    def signal(c: Candidate) -> Teacher:
        if c.signal == "live":
            return LiveTeacher(teacher)
        if not table:
            table.append(CachedTeacher.from_table(predict(teacher, taught), directory))
        return table[0]

    def train(c: Candidate, upto: int) -> dict[str, float]:
        with warnings.catch_warnings():  # the loss-scale guard speaks for the full run, not for each candidate
            warnings.simplefilter("ignore", UserWarning)
            out = fit(build(), taught if c.taught else labelled, objective=copy.deepcopy(c.objective),
                      config=config_for(c), num_classes=num_classes, teacher=signal(c) if c.taught else None,
                      val_data=val, checkpoint_dir=directory / slug(c.name), resume=True, device=device, quiet=True,
                      name=f"pilot: {c.name}", stop_at=upto)
        return late_score(out.history, upto)

    saved = directory / "step_costs.json"  # measured once: a resumed job decides as its first start did
    if saved.is_file() and len(json.loads(saved.read_text())) == len(cands):
        costs = json.loads(saved.read_text())
    else:
        costs = step_costs(cands, build, teacher, taught, config_for(cands[0]).batch_size, num_classes)
        atomic_write_text(saved, json.dumps(costs))
    measured, costs, skipped = affordable(cands, costs, job_steps, share)
    pilot = run_pilot(measured, train, pilot_budget(job_steps, costs, share), total, done, record,
                      progress=None if quiet else _say, n_val=len(val), costs=costs,  # type: ignore[arg-type]
                      allowed=share / (1 - share) * job_steps)
    pilot.skipped = skipped
    return pilot


def step_costs(cands: list[Candidate], build: Callable[[], nn.Module], teacher: nn.Module, data: Dataset,
               batch_size: int, num_classes: int) -> list[float]:
    """Each candidate's cost per step relative to a plain, unaugmented one: its augmentation, the
    student's forward and backward, and the teacher's forward where the teacher runs live (medians of a
    few timed calls; one timing per distinct setting). Augmentation can cost more than the student:
    shifting and mixing 40×101 spectrograms takes as long again as a small MLP's step."""
    if not any((c.signal == "live" and c.taught) or c.augment.enabled for c in cands):
        return [1.0] * len(cands)
    from distill.data.augment import augment_batch
    from distill.data.batches import iter_batches
    from distill.models.zoo import device_of, logits_of

    student = build()
    batch = next(iter(iter_batches(data, torch.arange(min(batch_size, len(data))), batch_size)))  # type: ignore[arg-type]
    x, y = batch["inputs"].to(device_of(student)), batch["labels"].to(device_of(student))
    gen = torch.Generator().manual_seed(0)

    def seconds(call: Callable[[], Any]) -> float:
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]  # the second fastest: past any warm-up call

    def step(c: Candidate | None) -> Callable[[], None]:
        def call() -> None:  # c None: a plain, unaugmented step
            inputs = augment_batch(x, y, num_classes, c.augment, gen)[0] if c and c.augment.enabled else x
            logits_of(student(inputs)).float().sum().backward()
            if c and c.signal == "live" and c.taught:
                with torch.no_grad():
                    logits_of(teacher(inputs.to(device_of(teacher))))
        return call

    plain = max(seconds(step(None)), 1e-6)
    timed: dict[tuple[str, bool], float] = {}
    for c in cands:
        key = (c.augment.model_dump_json(), c.signal == "live" and c.taught)
        if key not in timed:
            timed[key] = coarse(seconds(step(c)) / plain) if c.augment.enabled or key[1] else 1.0
    return [timed[(c.augment.model_dump_json(), c.signal == "live" and c.taught)] for c in cands]


def coarse(ratio: float) -> float:
    """A measured cost ratio to one significant figure, at least 1 (1.3 → 1, 1.8 → 2, 9.7 → 10): the
    pilot's choices then move with real differences in cost, not with timing noise between two runs."""
    return max(1.0, float(f"{ratio:.1g}"))


def late_score(history: list[dict[str, float]], upto: int) -> dict[str, float]:
    """Mean validation accuracy and NLL over the rows after two thirds of `upto` steps (at least the last)."""
    late = [r for r in history if r.get("step", upto) > 2 * upto / 3] or history[-1:]
    return {"val_accuracy": sum(r["val_accuracy"] for r in late) / len(late),
            "val_nll": sum(r["val_nll"] for r in late) / len(late)}


def adopt(pilot_dir: Path, stage_dir: Path) -> None:
    """Continue a pilot candidate's paused run as a stage: its checkpoint files copied into `stage_dir`
    (each written whole, then renamed; `last.safetensors` last), unless the stage has its own already."""
    if (stage_dir / "last.safetensors").is_file() or not (pilot_dir / "last.safetensors").is_file():
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "best.safetensors", "notes.json", "last.safetensors"):
        if (pilot_dir / name).is_file():
            tmp = stage_dir / f".{name}.adopting"
            shutil.copyfile(pilot_dir / name, tmp)
            os.replace(tmp, stage_dir / name)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def plan_from(cands: list[Candidate], pilot: Pilot) -> Plan:
    """The plan the pilot chose: its best candidate that uses the teacher, and its best plain one as the
    baseline; `why` quotes both scores (and says first when plain training scored higher)."""
    by_name = {c.name: c for c in cands}
    winner, plain = by_name[pilot.winner], by_name[pilot.best_plain]  # type: ignore[index]
    w, p = _final(pilot, winner.name), _final(pilot, plain.name)
    scores = (f"validation accuracy {100 * w['val_accuracy']:.2f}% after {w['steps']} steps, against "
              f"{100 * p['val_accuracy']:.2f}% for {plain.name} after {p['steps']}")
    if pilot.plain_won:
        why = (f"no candidate using the teacher beat plain training in the pilot; the distilled student uses "
               f"the best of them, {winner.name} ({scores})")
    else:
        why = f"{winner.name} (auto: the best of {len(cands) - len(pilot.skipped)} candidates in the pilot, {scores})"
    if pilot.skipped:
        why += (f"; not measured, as the job is too short for the pilot to afford their steps (a live teacher, "
                f"augmentation) within its "
                f"share: {', '.join(pilot.skipped)}")
    return Plan(winner, plain, why, pilot.to_dict())


def _final(pilot: Pilot, name: str) -> dict[str, Any]:
    return max((r for r in pilot.rows if r["name"] == name), key=lambda r: r["rung"])
