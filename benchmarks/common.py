"""Shared helpers for benchmark scripts: the results-file format and summary statistics."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work"  # runs and checkpoints (git-ignored)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = torch.get_num_threads()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {cpu}, {cores} cores{gpu}, torch {torch.__version__}"


def write_result(name: str, metrics: dict[str, float], extra: dict | None = None) -> Path:
    """Write benchmarks/results/<name>.json and print it as one JSON line."""
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    record = {"name": name, "command": f"{threads}python " + " ".join(sys.argv), "machine": machine(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "metrics": {k: float(v) for k, v in metrics.items()}, **(extra or {})}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def publish_run(run_dir: Path, dest: Path) -> None:
    """Copy a run's small, human files (report, plots, config, per-epoch metrics) to `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "plots").mkdir(parents=True)
    for name in ("report.md", "report.json", "config.yaml"):
        shutil.copy(run_dir / name, dest / name)
    for png in (run_dir / "plots").glob("*.png"):
        shutil.copy(png, dest / "plots" / png.name)
    for stage in ("teacher", "baseline", "distilled"):
        if (run_dir / stage / "metrics.jsonl").is_file():
            (dest / stage).mkdir()
            shutil.copy(run_dir / stage / "metrics.jsonl", dest / stage / "metrics.jsonl")


def teacher_once(config: Path, overrides: list[str]) -> Path:
    """The weights of `config`'s teacher, trained once as the resumable run `teacher` (overrides must
    set output_dir) and reused as they are afterwards: student settings may change later without
    retraining it."""
    from distill.core.rundir import open_run_dir
    from distill.data.datasets import load_data
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.pipeline import load_or_train_teacher

    cfg = load_config(config, [*overrides, "name=teacher"])
    done = Path(cfg.output_dir) / "teacher" / "teacher" / "model.safetensors"
    if done.is_file():
        return done
    run_dir = open_run_dir(cfg, resume=True)
    load_or_train_teacher(cfg, load_data(cfg.data), run_dir, resume=True)
    return done


def run_report(config: Path, overrides: list[str]) -> dict:
    """`distill run` of `config` with `overrides`, resumed (a re-run skips finished stages); its report.json."""
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.pipeline import run

    run_dir = run(load_config(config, overrides), resume=True)
    return json.loads((run_dir / "report.json").read_text())
