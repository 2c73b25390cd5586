"""The first hour of a new user, measured: the README's command blocks run as documented, every job's
smoke budget timed, every setting `distill config` prints checked for a meaning.

Run on an otherwise idle machine: .venv/bin/python benchmarks/first_hour.py [--skip-readme]
Writes benchmarks/results/first_hour.json:
  readme_blocks, readme_blocks_ok   ```bash blocks of README.md, and those that ran as documented
                                    (tests/readme_blocks.py: in order, DISTILL_SMOKE=1, a scratch dir)
  smoke_<command>_s                 wall seconds of `distill <command> --smoke` (each in its own scratch
                                    dir, the LM assets already set up), smoke_wall_s_max the slowest
  config_keys, config_keys_documented   settings of every job (`distill config run|lm|textkd|task|search`)
                                    and those with a meaning
Targets: readme_blocks_ok == readme_blocks, smoke_wall_s_max <= 120, every key documented.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import WORK, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUT = WORK / "first_hour"
DISTILL = str(ROOT / ".venv" / "bin" / "distill")
SEARCH = str(ROOT / "configs" / "search_fmnist.yaml")
TEACHER = "teacher.checkpoint=../run/runs/default-smoke/teacher/model.safetensors"
STUDENT = "student.checkpoint=../run/runs/default-smoke/distilled/model.safetensors"
SMOKES = {  # command → its arguments; prune and quantize read the run's smoke weights
    "run": ["run"], "train-teacher": ["train-teacher"], "prune": ["prune", TEACHER, "--reduction", "0.5", "--out", "p"],
    "quantize": ["quantize", STUDENT], "search": ["search", SEARCH], "lm-cache": ["lm-cache"], "lm": ["lm"],
    "textkd": ["textkd"], "generate": ["generate", "--output", "answers.jsonl"], "task": ["task"],
}


def smoke_seconds() -> dict[str, float]:
    out = {}
    for name, args in SMOKES.items():
        where = OUT / "smoke" / name
        where.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run([DISTILL, *args, "--smoke", "--quiet"], cwd=where, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"distill {name} --smoke failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"smoke {name}: {seconds:.1f} s", flush=True)
        out[f"smoke_{name.replace('-', '_')}_s"] = seconds
    return out


def config_keys() -> dict[str, float]:
    from distill.recipes.settings import JOBS, job_config, settings

    rows = [r for job in JOBS for r in settings(job_config(job, SEARCH if job == "search" else None, []))]
    return {"config_keys": len(rows), "config_keys_documented": sum(bool(r.meaning.strip()) for r in rows)}


def readme() -> dict[str, float]:
    from readme_blocks import command_blocks, run_blocks

    blocks = command_blocks()
    outcomes = run_blocks(OUT / "readme", blocks)
    (OUT / "readme.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    for o in outcomes:
        print(f"README line {o.line}: {'ok' if o.ok else 'FAILED'} in {o.seconds:.0f} s", flush=True)
    return {"readme_blocks": len(blocks), "readme_blocks_ok": sum(o.ok for o in outcomes),
            "readme_wall_s": sum(o.seconds for o in outcomes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-readme", action="store_true", help="only the smoke timings and the settings count")
    args = p.parse_args()
    import shutil

    shutil.rmtree(OUT, ignore_errors=True)
    metrics = {**config_keys(), **smoke_seconds()}
    metrics["smoke_wall_s_max"] = max(v for k, v in metrics.items() if k.startswith("smoke_"))
    if not args.skip_readme:
        metrics.update(readme())
    write_result("first_hour", metrics)


if __name__ == "__main__":
    main()
