"""`distill search`: train candidate students, measure them side by side, draw the Pareto front, and
recommend the smallest student that meets stated requirements.

    distill search configs/search_fmnist.yaml [key=value ...] [--resume]

A search config names a base run config, a space of config keys to vary (student sizes, KD
settings, loss mixes) and the requirements. Every candidate is an ordinary `distill run` (no
baseline) of the base config with its values, sharing one trained teacher, so an interrupted
search continues where it stopped: finished candidates are reused, an interrupted one resumes
from its last epoch. All candidates and the teacher are then timed together, in interleaved
rounds, so their speed ratios are comparable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, model_validator

from distill.core.checkpoint import load_weights
from distill.core.config import Strict, read_raw, validate_section
from distill.core.errors import ConfigError
from distill.core.files import atomic_write_text, make_private_dir
from distill.core.rundir import open_run_dir
from distill.data.datasets import load_data
from distill.eval.bench import measure_models
from distill.recipes.classify.config import default_config_dict, validate_config
from distill.recipes.classify.pipeline import load_or_train_teacher, run
from distill.recipes.classify.students import build_student


class Requirements(Strict):
    """What the chosen student must achieve, relative to the teacher on the same machine."""

    max_accuracy_drop: float | None = Field(None, ge=0, description="Points of test accuracy the student may lose.")
    min_speedup: float | None = Field(None, gt=0, description="Teacher latency / student latency at batch 1.")
    max_size_mb: float | None = Field(None, gt=0, description="Largest student weights file, in MB.")
    max_latency_ms_p95: float | None = Field(None, gt=0, description="Student batch-1 latency, 95th percentile.")
    threads: int = Field(1, ge=1, description="CPU threads used to time every model.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where latency is measured (the deployment target).")
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch", description="What answers when latency is measured: PyTorch eager, or ONNX Runtime on the CPU from "
        "each model's ONNX export (the runtime a student often ships in).")

    @model_validator(mode="after")
    def _runtime_on_its_device(self) -> Requirements:
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError("runtime: onnxruntime times models on the CPU; set device: cpu (or runtime: torch)")
        return self


class SearchConfig(Strict):
    name: str = Field("search", min_length=1, description="The run directory's name under output_dir.")
    output_dir: Path = Field(Path("runs"), description="Where run directories go (output_dir/name).")
    base: Path | None = Field(None, description="Run config every candidate starts from (default: built-in): "
                              "a path from the working directory, or else from the search config's folder.")
    overrides: list[str] = Field(default_factory=list, description="key=value applied to the base first.")
    space: dict[str, list[Any]] = Field(..., min_length=1, description="Config key → values to try.")
    strategy: Literal["grid", "random", "optuna"] = Field("grid", description=(
        "grid: every combination of space; random: `trials` draws from it; optuna: its TPE sampler over it."))
    trials: int | None = Field(None, ge=1, description="Candidates to train (grid: all when omitted).")
    workers: int = Field(1, ge=1, description="Candidates trained at once, in separate processes.")
    seed: int = Field(0, description="Seeds random and optuna draws.")
    requirements: Requirements = Field(default_factory=Requirements)


@dataclass
class Candidate:
    name: str
    values: dict[str, Any]
    accuracy: float = 0.0
    drop: float = 0.0
    params: int = 0
    size_mb: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    speedup: float = 0.0
    pareto: bool = False
    meets: bool = False


def load_search_config(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    raw = read_raw(path, overrides, lambda: {})
    cfg = validate_section(SearchConfig, raw, str(path), overrides)
    if cfg.base is not None and not cfg.base.is_absolute() and not cfg.base.exists():
        beside = Path(path).parent / cfg.base  # a base named as the search config's neighbour
        if beside.exists():
            cfg = cfg.model_copy(update={"base": beside})
    base = base_raw(cfg)
    for key in cfg.space:  # every key of the space must be a key the run config accepts
        _ = validate_config(_with(base, {key: cfg.space[key][0]}), source=f"space.{key}")
    return cfg


def run_search(cfg: SearchConfig, resume: bool = False) -> Path:
    """Train, measure and rank every candidate; writes search.json, search.md and pareto.png."""
    root = _open(cfg, resume)
    base = base_raw(cfg)
    teacher_path = _teacher(cfg, base, root)
    shared = {"output_dir": str(root / "candidates"), "baseline": False, "quiet": True,
              "teacher.checkpoint": str(teacher_path)}
    if cfg.strategy == "optuna":
        choices = _optuna(cfg, base, shared, root)
    else:
        choices = assignments(cfg.space, cfg.strategy, cfg.trials, cfg.seed)
        _train_all([_with(base, {**shared, **v, "name": _name(v)}) for v in choices], cfg.workers)
    teacher, candidates = measure(cfg, base, shared, choices)
    rank(candidates, cfg.requirements)
    report = summary(cfg, teacher, candidates)
    atomic_write_text(root / "search.json", json.dumps(report, indent=2))
    from distill.eval.report import render_search  # matplotlib only when drawing

    render_search(root, report)
    return root


def assignments(space: dict[str, list[Any]], strategy: str, trials: int | None, seed: int) -> list[dict[str, Any]]:
    """Grid: every combination (the first `trials` of a seeded shuffle when `trials` is smaller);
    random: `trials` combinations drawn with the seed."""
    grid = [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
    if strategy == "grid" and (trials is None or trials >= len(grid)):
        return grid
    random.Random(seed).shuffle(grid)
    return grid[: trials or len(grid)]


def rank(candidates: list[Candidate], req: Requirements) -> None:
    """Mark the Pareto front (accuracy vs latency, and accuracy vs size) and who meets the requirements."""
    for c in candidates:
        c.meets = not shortfalls(c, req)
        c.pareto = not any(_dominates(o, c, "latency_p50_ms") for o in candidates) or \
            not any(_dominates(o, c, "size_mb") for o in candidates)


def shortfalls(c: Candidate, req: Requirements) -> dict[str, float]:
    """Each requirement `c` misses, with how far it is from it (in the requirement's unit)."""
    misses = {
        "max_accuracy_drop": c.drop - req.max_accuracy_drop if req.max_accuracy_drop is not None else 0,
        "min_speedup": req.min_speedup - c.speedup if req.min_speedup is not None else 0,
        "max_size_mb": c.size_mb - req.max_size_mb if req.max_size_mb is not None else 0,
        "max_latency_ms_p95": c.latency_p95_ms - req.max_latency_ms_p95 if req.max_latency_ms_p95 is not None else 0,
    }
    return {k: v for k, v in misses.items() if v > 0}


def recommend(candidates: list[Candidate]) -> Candidate | None:
    """The smallest candidate (fewest parameters, then fastest) that meets every requirement."""
    ok = [c for c in candidates if c.meets]
    return min(ok, key=lambda c: (c.params, c.latency_p50_ms)) if ok else None


def summary(cfg: SearchConfig, teacher: dict[str, float], candidates: list[Candidate]) -> dict[str, Any]:
    """The search's result: every candidate, the recommendation, or why there is none.

    `unmet` names each requirement that *no* candidate meets, with the smallest shortfall any had;
    when it is empty but nothing is recommended, each requirement is met by some candidate but none
    meets all at once. `closest` ranks candidates by their summed relative shortfalls.
    """
    best = recommend(candidates)
    misses = [shortfalls(c, cfg.requirements) for c in candidates]
    unmet = {} if best else {k: min(m.get(k, 0.0) for m in misses) for k in set().union(*misses)}
    closest = sorted(candidates, key=lambda c: sum(_relative(k, v, cfg.requirements)
                                                     for k, v in shortfalls(c, cfg.requirements).items()))
    return {"name": cfg.name, "requirements": cfg.requirements.model_dump(), "teacher": teacher,
            "candidates": [asdict(c) for c in candidates], "recommended": asdict(best) if best else None,
            "requirement_met": best is not None,
            "unmet": {k: v for k, v in unmet.items() if v > 0},
            "closest": [{**asdict(c), "shortfalls": shortfalls(c, cfg.requirements)} for c in closest[:3]]
            if not best else []}


# --------------------------------------------------------------------------- internals

def base_raw(cfg: SearchConfig) -> dict[str, Any]:
    return read_raw(cfg.base, cfg.overrides, default_config_dict)


def measure(cfg: SearchConfig, base: dict[str, Any], shared: dict[str, Any],
            choices: list[dict[str, Any]]) -> tuple[dict[str, float], list[Candidate]]:
    """Accuracy from each candidate's report; costs of all of them and the teacher, timed together."""
    first = validate_config(_with(base, {**shared, "name": _name(choices[0])}))
    data = load_data(first.data)
    teacher = load_or_train_teacher(first, data, Path(shared["output_dir"]), resume=True)
    device = _timing_device(cfg.requirements)
    models, candidates = {"teacher": teacher.to(device)}, []
    for values in choices:
        run_cfg = validate_config(_with(base, {**shared, **values, "name": _name(values)}))
        run_dir = Path(run_cfg.output_dir) / run_cfg.name
        report = json.loads((run_dir / "report.json").read_text())
        student = build_student(run_cfg, data, teacher)
        load_weights(run_dir / "distilled" / "model.safetensors", student)
        models[run_cfg.name] = student.to(device).eval()
        candidates.append(Candidate(run_cfg.name, values, accuracy=100 * report["models"]["distilled"]["accuracy"]))
        teacher_acc = 100 * report["models"]["teacher"]["accuracy"]
    if cfg.requirements.runtime == "onnxruntime":
        from distill.export.onnx import as_onnxruntime  # onnx is imported only when asked for

        example = torch.as_tensor(data.test[0]["inputs"]).unsqueeze(0)
        onnx_dir = Path(shared["output_dir"]) / "onnx"
        models = {k: as_onnxruntime(m, example, onnx_dir / f"{k}.onnx", cfg.requirements.threads)
                  for k, m in models.items()}
    costs = measure_models(models, data.input_shape, threads=cfg.requirements.threads,
                           batch=first.bench.throughput_batch, repeats=first.bench.repeats)
    t = costs["teacher"]
    row = {"accuracy": teacher_acc, "params": t["params"], "size_mb": t["size_mb"],
           "latency_p50_ms": t["latency_b1_p50_ms"], "latency_p95_ms": t["latency_b1_p95_ms"]}
    for c in candidates:
        s = costs[c.name]
        c.drop = teacher_acc - c.accuracy
        c.params, c.size_mb = int(s["params"]), s["size_mb"]
        c.latency_p50_ms, c.latency_p95_ms = s["latency_b1_p50_ms"], s["latency_b1_p95_ms"]
        c.speedup = t["latency_b1_p50_ms"] / s["latency_b1_p50_ms"]
    return row, candidates


def _timing_device(req: Requirements) -> torch.device:
    if req.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("requirements.device: cuda, but no CUDA device is visible here; measure on the "
                          "deployment machine, or set requirements.device=cpu.")
    return torch.device(req.device)


def _open(cfg: SearchConfig, resume: bool) -> Path:
    root = Path(cfg.output_dir) / cfg.name
    saved = root / "search.yaml"
    current = cfg.model_dump(mode="json")
    if saved.is_file():
        if not resume:
            raise ConfigError(f"Search directory {root} already exists; pass --resume to continue it, or "
                              "choose another name=NEW_NAME (nothing was overwritten).")
        previous = yaml.safe_load(saved.read_text())
        if {k: v for k, v in previous.items() if k != "requirements"} != \
                {k: v for k, v in current.items() if k != "requirements"}:
            raise ConfigError(f"--resume: the search config differs from {saved} beyond `requirements`; resume "
                              "with the same space and base, or start a new search with name=NEW_NAME.")
    make_private_dir(root)
    atomic_write_text(saved, yaml.safe_dump(current, sort_keys=False))
    return root


def _teacher(cfg: SearchConfig, base: dict[str, Any], root: Path) -> Path:
    """The base config's teacher weights: given, or trained once for the whole search."""
    run_cfg = validate_config(_with(base, {"output_dir": str(root), "name": "teacher", "quiet": True}))
    if run_cfg.teacher.checkpoint is not None:
        return Path(run_cfg.teacher.checkpoint)
    run_dir = open_run_dir(run_cfg, resume=True)
    load_or_train_teacher(run_cfg, load_data(run_cfg.data), run_dir, resume=True)
    return run_dir / "teacher" / "model.safetensors"


def _train_all(raws: list[dict[str, Any]], workers: int) -> None:
    if workers == 1 or len(raws) == 1:
        for raw in raws:
            _train_one(raw)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        list(pool.map(_train_one, raws))  # re-raises a candidate's error here


def _train_one(raw: dict[str, Any]) -> str:
    return str(run(validate_config(raw), resume=True))


def _optuna(cfg: SearchConfig, base: dict[str, Any], shared: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Bayesian search (TPE, two objectives: accuracy ↑, parameters ↓), stored in SQLite so it resumes."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("strategy: optuna needs the optuna package: pip install 'distill[search]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=cfg.name, storage=f"sqlite:///{root / 'optuna.db'}", load_if_exists=True,
                                directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for _ in range((cfg.trials or 10) - len(done)):
        trial = study.ask()
        values = {k: json.loads(trial.suggest_categorical(k, [json.dumps(v) for v in vs])) for k, vs in cfg.space.items()}
        run_dir = Path(_train_one(_with(base, {**shared, **values, "name": _name(values)})))
        report = json.loads((run_dir / "report.json").read_text())["models"]["distilled"]
        study.tell(trial, [report["accuracy"], report["params"]])
    seen: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            values = {k: json.loads(v) for k, v in t.params.items()}
            seen[_name(values)] = values
    return list(seen.values())


def _with(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `raw` with dotted keys set (`student.kwargs.widths` → nested mappings)."""
    out = json.loads(json.dumps(raw, default=str))
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"space key `{key}`: `{part}` holds a value, not a section.")
        node[leaf] = value
    return out


def _name(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True)
    return "c-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _dominates(a: Candidate, b: Candidate, cost: str) -> bool:
    better_or_equal = a.accuracy >= b.accuracy and getattr(a, cost) <= getattr(b, cost)
    return better_or_equal and (a.accuracy > b.accuracy or getattr(a, cost) < getattr(b, cost))


def _relative(key: str, shortfall: float, req: Requirements) -> float:
    limit = getattr(req, key)
    return shortfall / max(abs(limit), 1e-9)
