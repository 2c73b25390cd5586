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
import copy
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill.core.config import validate_section
from distill.core.errors import ConfigError, ModelError
from distill.data.arrays import (
    as_indexed,
    check_dataset,
    check_label_range,
    labels_of,
    modality_of,
    stratified_split,
)
from distill.data.batches import iter_batches
from distill.data.transfer import as_unlabeled, with_transfer_set
from distill.eval.metrics import classification_metrics, predict
from distill.eval.verdict import compare_classifiers
from distill.losses.config import KDConfig
from distill.losses.methods import CE, Method
from distill.models.zoo import freeze, logits_of
from distill.recipes.classify.pilot import adopt, measure, plan_from, slug
from distill.recipes.classify.plan import (
    Candidate,
    Plan,
    candidates,
    chosen,
    plain_candidate,
    with_signal,
)
from distill.teachers.output import Teacher
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.budget import fit_patiently, grows, still_improving  # noqa: F401 (public)
from distill.training.classify import fit
from distill.training.config import TrainConfig

PILOT_SHARE = 0.2  # the pilot's share of a job's student steps, its own included (`recipes.classify.pilot`)


@dataclass
class Result:
    """A trained model, its metrics on the validation data (if given) and its per-validation history;
    for `distill`, the plan it trained with (`plan`: recipe, settings, why, the pilot's table), and with
    `compare=True` the plain baseline trained alongside and the verdict of the paired test."""

    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    baseline: Result | None = None
    verdict: dict[str, Any] | None = None  # `distill.eval.verdict.Verdict.to_dict()`, with its sentence
    seconds: dict[str, float] = field(default_factory=dict)  # pilot, distilled, baseline wall times
    notes: list[str] = field(default_factory=list)  # what to know before trusting it (also warned)


def distill(teacher: nn.Module, student: nn.Module, train_data: Dataset | DataLoader, *,
            loss: Method | None = None, val_data: Dataset | DataLoader | None = None,
            test_data: Dataset | DataLoader | None = None, signal: Literal["auto", "live", "cached"] = "auto",
            cache_dir: str | Path = "cache/teacher", config: TrainConfig | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
            unlabeled: Any = None, compare: bool = False, pilot_share: float = PILOT_SHARE,
            candidates: list[Candidate] | None = None, **train_options: Any) -> Result:
    """Train `student` to match the frozen `teacher` on `train_data`.

    Args:
        teacher: any module returning logits (or an object with `.logits`); it is frozen.
        student: the module to train; must predict the same classes as the teacher.
        train_data: a Dataset of `(inputs, label)` / dicts, or a DataLoader over one.
        loss: the objective, e.g. `KD(temperature=4, ratio=0.9)`; `CE()` trains without the teacher;
            None (default): chosen by measurement: a pilot (`pilot_share` of the job's steps) trains
            plain CE, soft targets and, on float inputs, function matching with augmentation scaled to
            the input, each briefly on `train_data`, and the best on validation trains in full
            (`distill.recipes.classify.pilot`; the table is in `Result.plan`);
            `Method([{"kind": "kd"}, {"kind": "hint", "student": "layer2", "teacher": "layer3"}, ...])`
            a weighted sum of terms over logits, layers and attention maps (needs signal="live"
            when a term reads teacher layers).
        val_data: held-out data for the pilot's scores, the weights kept (`training.classify.kept_row`)
            and the returned metrics; without it (and with a pilot) a stratified 10% of `train_data` is
            held out for all three.
        test_data: with `compare=True`, where the verdict is measured (default: `val_data`).
        signal: "live" runs the teacher on every batch (needed with augmentation); "cached" computes
            its logits once under `cache_dir` and reuses them; "auto" (default): live where the recipe
            augments, else the logits computed once, in memory.
        config: full training settings; `train_options` (epochs=, steps=, batch_size=, ...) override them.
            Without a budget: 10 epochs of the training set and at least 1,000 steps, continued to 4×
            when validation accuracy was still rising as its rate decayed (`distill.training.budget`).
        checkpoint_dir: where to write atomic checkpoints (needed for `resume`).
        unlabeled: extra inputs without labels (a tensor (N, ...), or a Dataset / DataLoader of inputs)
            that the teacher scores: the transfer set. The student learns the teacher's soft targets
            on labelled and unlabelled inputs, the labels' cross-entropy on the labelled ones.
        compare: also train the plain student the CLI trains (the pilot's best plain settings, the same
            steps) and say which is better with a paired test (`Result.baseline`, `Result.verdict`).
        pilot_share: the pilot's share of the job's student steps (0: no pilot; `loss=None` then means
            soft targets, T = 2, ratio 0.5).
        candidates: extra `distill.recipes.classify.plan.Candidate`s for the pilot to measure.
    """
    train_ds, config = _prepare(train_data, config, train_options)
    check_dataset(train_ds, "train_data")
    val_ds = _dataset(val_data) if val_data is not None else None
    test_ds = _dataset(test_data) if test_data is not None else val_ds
    for ds, where in ((val_ds, "val_data"), (test_ds, "test_data")):
        if ds is not None:
            check_dataset(ds, where)
    if compare and test_ds is None:
        raise ConfigError("compare=True measures both students on held-out data: pass val_data= or test_data=.")
    initial = copy.deepcopy(student)  # every pilot candidate and the baseline start from these weights
    piloted = loss is None and pilot_share > 0
    with token_inputs(teacher, student, initial), _workdir(checkpoint_dir, resume) as work:
        num_classes = check_models(teacher, student, train_ds)
        extra = as_unlabeled(unlabeled) if unlabeled is not None else None
        if extra is not None and loss is not None and not loss.needs_teacher:
            raise ConfigError("unlabeled inputs are taught by the teacher, which this loss does not use; "
                              "pass a distillation loss (e.g. KD()) or drop unlabeled=.")
        if piloted and val_ds is None:  # the pilot scores on held-out examples: 10% of train_data, for the job too
            train_ds, val_ds = _hold_out(train_ds)
            test_ds = test_ds if test_ds is not None else val_ds
        taught = with_transfer_set(train_ds, extra)
        teacher = freeze(teacher)
        steps = config.total_steps(math.ceil(len(taught) / config.batch_size))  # type: ignore[arg-type]
        t0 = time.perf_counter()
        plan = _plan(teacher, initial, train_ds, extra, val_ds, config, loss, signal, num_classes, steps,
                     pilot_share if piloted else 0.0, candidates, compare, quiet, work / "pilot")
        seconds = {"pilot": plan.pilot["seconds"] if plan.pilot else 0.0, "pilot_wall": time.perf_counter() - t0}
        how = plan.distilled
        stage = Path(checkpoint_dir) if checkpoint_dir else work / "distilled"
        if plan.pilot:  # the winner's pilot steps are the start of its run
            adopt(work / "pilot" / slug(how.name), stage)
        t0 = time.perf_counter()
        signal_of = _signal(teacher, how, taught, signal, Path(cache_dir), quiet)
        n_val = _size(val_ds)
        grow = grows(config, n_val)
        out, notes, warned = fit_patiently(
            lambda upto, again: fit(student, taught, objective=how.objective, config=_budget(config, how, upto),
                                    num_classes=num_classes, teacher=signal_of, val_data=val_ds,
                                    checkpoint_dir=stage if (checkpoint_dir or plan.pilot or grow) else None,
                                    resume=again, quiet=quiet, name="distilled"),
            steps, grow=grow, n_val=n_val, name="distilled", resume=resume or bool(plan.pilot))
        seconds["distilled"] = time.perf_counter() - t0
        metrics = _val_metrics(out.model, val_ds, teacher) if val_ds is not None else {}
        result = Result(out.model, metrics, out.history, plan.to_dict(), seconds=seconds, notes=notes + warned)
        for note in warned:
            warnings.warn(note, stacklevel=2)
        if compare:
            _compare(result, plan, copy.deepcopy(initial), train_ds, val_ds, test_ds, teacher, config, steps,
                     num_classes, work, resume, quiet)
        return result


def _size(data: Dataset | None) -> int:
    """How many examples `data` holds (0 without it): the validation split's size for budget rules."""
    return len(data) if data is not None else 0  # type: ignore[arg-type]


@contextlib.contextmanager
def _workdir(checkpoint_dir: str | Path | None, resume: bool,
             stages: tuple[str, ...] = ("pilot", "baseline")) -> Iterator[Path]:
    """Where the run, the pilot's candidates and the baseline keep their checkpoints: `checkpoint_dir`
    (kept for `resume`; without it, what an earlier call left there, in the run's files and the
    `stages` subdirectories it uses, is cleared), else a temporary directory."""
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
            yield Path(tmp)
        return
    work = Path(checkpoint_dir)
    if not resume:  # a fresh job: an earlier job's paused candidates must not be continued
        for old in (work / stage for stage in stages):
            shutil.rmtree(old, ignore_errors=True)
        for name in ("last.safetensors", "best.safetensors", "metrics.jsonl"):
            (work / name).unlink(missing_ok=True)
    yield work


def compare(teacher: nn.Module, student: nn.Module, train_data: Dataset | DataLoader, **kwargs: Any) -> Result:
    """`distill(..., compare=True)`: the distilled student, the plain one trained as the CLI trains it
    (same steps, the pilot's best plain settings), and which was better by a paired test."""
    return distill(teacher, student, train_data, compare=True, **kwargs)


def _plan(teacher: nn.Module, initial: nn.Module, train_ds: Dataset, extra: Dataset | None, val_ds: Dataset | None,
          config: TrainConfig, loss: Method | None, signal: str, num_classes: int, steps: int, share: float,
          extra_candidates: list[Candidate] | None, compare: bool, quiet: bool, directory: Path) -> Plan:
    """The distilled and plain students' settings: the loss given, or the pilot's choice."""
    example = torch.as_tensor(train_ds[0]["inputs"])
    modality, shape = modality_of(example), tuple(example.shape)
    if loss is not None:
        # a cache holds logits for KD and CE; any other term (hints, relations, attention) runs the teacher live
        how = chosen("soft_targets", signal, config.augment, modality, shape, method=loss,
                     live_needed=any(t.kind not in ("kd", "ce") for t in loss.terms))
        return Plan(how, plain_candidate(config.augment), "the loss given")
    if share <= 0:
        how = chosen("soft_targets", signal, config.augment, modality, shape)
        return Plan(how, plain_candidate(config.augment), f"{how.name} (no pilot: pilot_share is 0)")
    cands = candidates(modality, shape, kd=KDConfig(), augment=config.augment, live_ok=signal != "cached",
                       extra=extra_candidates)
    if signal == "live":
        cands = [with_signal(c, "live") for c in cands]
    pilot = measure(cands, build=lambda: copy.deepcopy(initial), labelled=train_ds,
                    taught=with_transfer_set(train_ds, extra), val=val_ds, teacher=teacher,  # type: ignore[arg-type]
                    config_for=lambda c: _budget(config, c, steps), num_classes=num_classes,
                    job_steps=steps * (2 if compare else 1), total=steps, share=share, directory=directory,
                    quiet=quiet)
    return plan_from(cands, pilot)


def _hold_out(data: Dataset, fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    """A stratified `fraction` of `data` held out for validation (the pilot's scores, the best weights)."""
    labels = labels_of(data)
    train_i, held_i, _ = stratified_split(labels, (fraction, 0.0), seed=0)
    if len(held_i) == 0 or len(train_i) == 0:
        raise ConfigError(f"the pilot needs validation data and {len(labels)} training examples are too few to hold "
                          "some out: pass val_data=, or choose the loss yourself (loss=KD(...)), or pilot_share=0.")
    return Subset(data, train_i.tolist()), Subset(data, held_i.tolist())


def _signal(teacher: nn.Module, how: Candidate, taught: Dataset, signal: str, cache_dir: Path,
            quiet: bool) -> Teacher | None:
    if not how.taught:
        return None
    if how.signal == "live" or signal == "live":
        return LiveTeacher(teacher)
    if signal == "cached":
        return CachedTeacher.build_or_load(teacher, taught, cache_dir, quiet=quiet)
    return CachedTeacher.from_table(predict(teacher, taught), cache_dir)  # computed once, in memory


def _budget(config: TrainConfig, how: Candidate, steps: int) -> TrainConfig:
    return config.model_copy(update={"augment": how.augment, "steps": steps, "epochs": None})


def _compare(result: Result, plan: Plan, student: nn.Module, train_ds: Dataset, val_ds: Dataset | None,
             test_ds: Dataset, teacher: nn.Module, config: TrainConfig, steps: int, num_classes: int,
             work: Path, resume: bool, quiet: bool) -> None:
    """Train the plain baseline as the CLI does (the pilot's best plain candidate continued to the same
    steps) and judge the pair on `test_ds` with a paired test."""
    t0 = time.perf_counter()
    if plan.pilot:
        adopt(work / "pilot" / slug(plan.baseline.name), work / "baseline")
    n_val = _size(val_ds)
    out, notes, warned = fit_patiently(
        lambda upto, again: fit(student, train_ds, objective=CE(), config=_budget(config, plan.baseline, upto),
                                num_classes=num_classes, val_data=val_ds, checkpoint_dir=work / "baseline",
                                resume=again, quiet=quiet, name="baseline"),
        steps, grow=grows(config, n_val), n_val=n_val, name="baseline", resume=resume or bool(plan.pilot))
    result.seconds["baseline"] = time.perf_counter() - t0
    metrics = _val_metrics(out.model, val_ds, teacher) if val_ds is not None else {}
    result.baseline = Result(out.model, metrics, out.history, notes=notes + warned)
    labels = labels_of(test_ds)
    correct = {k: predict(m, test_ds).argmax(-1) == labels for k, m in (("plain", out.model),
                                                                           ("distilled", result.model))}
    verdict = compare_classifiers(correct["plain"], correct["distilled"])
    result.verdict = {**verdict.to_dict(), "sentence": verdict.sentence("the distilled student", "the plain one")}
    if not quiet:
        print(result.verdict["sentence"], file=sys.stderr)


def train(model: nn.Module, train_data: Dataset | DataLoader, *, num_classes: int | None = None,
          val_data: Dataset | DataLoader | None = None, config: TrainConfig | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          **train_options: Any) -> Result:
    """Train `model` on labels alone (a teacher, or the no-teacher baseline)."""
    train_ds, config = _prepare(train_data, config, train_options)
    check_dataset(train_ds, "train_data")
    with token_inputs(model):  # Hugging Face models take the (B, 2, L) text rows
        val_ds = _dataset(val_data) if val_data is not None else None
        if val_ds is not None:
            check_dataset(val_ds, "val_data")
        num_classes = num_classes or _num_classes(model, train_ds)
        n_val = _size(val_ds)
        steps = config.total_steps(math.ceil(len(train_ds) / config.batch_size))  # type: ignore[arg-type]
        grow = grows(config, n_val)
        with _workdir(checkpoint_dir, resume, stages=()) as work:  # train() has no pilot or baseline
            out, notes, warned = fit_patiently(
                lambda upto, again: fit(model, train_ds, objective=CE(),
                                        config=config if upto == steps else config.with_steps(upto),
                                        num_classes=num_classes, val_data=val_ds,
                                        checkpoint_dir=work if (checkpoint_dir or grow) else None, resume=again,
                                        quiet=quiet, name="model"),
                steps, grow=grow, n_val=n_val, name="model", resume=resume)
        for note in warned:
            warnings.warn(note, stacklevel=2)
        metrics = _val_metrics(out.model, val_ds, None) if val_ds is not None else {}
        return Result(out.model, metrics, out.history, notes=notes + warned)


def _prepare(data: Dataset | DataLoader, config: TrainConfig | None,
             options: dict[str, Any]) -> tuple[Dataset, TrainConfig]:
    base = (config or TrainConfig()).model_dump()
    if isinstance(data, DataLoader) and data.batch_size and "batch_size" not in options:
        options = {**options, "batch_size": data.batch_size}
    if "lr" in options:
        base["optimizer"]["lr"] = options.pop("lr")
    for given, other in (("steps", "epochs"), ("epochs", "steps")):  # a budget given replaces the config's
        if options.get(given) is not None:
            base[other] = None
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
    try:
        n = logits_of(model(batch["inputs"].to(device))).shape[-1]
    finally:
        model.train(was_training)
    return n


def check_models(teacher: nn.Module, student: nn.Module, data: Dataset) -> int:
    """The classes teacher, student and labels agree on, before any training; a mismatch names which of
    the three disagrees with the others."""
    n_t, n_s = _num_classes(teacher, data), _num_classes(student, data)
    labels = labels_of(data)
    top = int(labels.max()) if len(labels) else -1
    if n_t != n_s:
        n = top + 1  # classes the labels need at least
        culprit = ("the student" if n_s < n <= n_t or n == n_t else "the teacher" if n_t < n <= n_s or n == n_s
                   else "the one whose outputs are not your classes")
        raise ModelError(f"the teacher outputs {n_t} classes and the student {n_s} (the labels go up to {top}); "
                         f"distillation needs one label space: fix {culprit}'s number of outputs.")
    check_label_range(labels, n_t, "train_data")  # labels beyond the models' classes: a DataError naming both
    return n_t


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
