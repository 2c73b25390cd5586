"""End to end on BBC News: SmolLM2-135M-Instruct, served by `distill serve` and called over HTTP,
writes rationales + answers; 4-layer students (4/30 of its layers, built from it) are trained
label-only, sequence-level and step-by-step on the same kept examples, over 3 seeds (and, in a
second run on the same data, label-only and step-by-step with twice the steps).
Also: generation requests/s with 1 vs 4 concurrent requests, side by side on the same server.

    python benchmarks/step_by_step.py                 # ≈ 80 min on 2 CPU cores
    python benchmarks/step_by_step.py --seeds 0 --train-examples 40   # a quick look

Writes benchmarks/results/step_by_step.json; the run (report.md, generated JSONL) stays in
benchmarks/work/step_by_step and resumes if interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import WORK, mean_std, write_result

from distill.textkd.config import load_textkd_config
from distill.textkd.generate import generate
from distill.textkd.pipeline import open_teacher, prompt_rows, run_textkd
from distill.textkd.teachers import Sampling


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-examples", type=int, default=150)
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--concurrency-prompts", type=int, default=24)
    args = ap.parse_args()
    overrides = [f"output_dir={WORK}", "name=step_by_step", f"seeds={json.dumps(args.seeds)}",
                 f"data.train_examples={args.train_examples}", f"data.eval_examples={args.eval_examples}"]
    cfg = load_textkd_config(None, overrides)
    run_dir = run_textkd(cfg, resume=(WORK / "step_by_step" / "config.yaml").is_file())
    report = json.loads((run_dir / "report.json").read_text())
    speed = concurrency_speed(cfg, run_dir, args.concurrency_prompts)
    # Step-by-step has twice the rows (label + rationale), so at equal steps its label task sees each
    # example half as often: a second run trains it (and label-only, for fairness) twice as long.
    long_dir = equal_epochs_arm(overrides, run_dir, cfg.train.steps * 2)
    metrics = {"teacher_acc": report["teacher"]["metrics"]["accuracy"],
               "kept_fraction": report["filter"]["kept"] / report["filter"]["total"],
               "examples": report["examples"], "seeds": len(args.seeds), **speed}
    for kind in ("label_only", "seq_kd", "step_by_step"):
        runs = [json.loads((run_dir / "students" / f"{kind}-s{s}" / "eval.json").read_text())["metrics"]
                for s in args.seeds]
        for key, short in (("accuracy", "acc"), ("completion_tokens_mean", "tokens_out"),
                           ("latency_p50_ms", "p50_ms"), ("cost_per_1k", "cost_per_1k")):
            m, s = mean_std([r[key] for r in runs])
            metrics[f"{kind}_{short}"], metrics[f"{kind}_{short}_std"] = m, s
    for kind in ("label_only", "step_by_step"):
        long = [json.loads((long_dir / "students" / f"{kind}-s{s}" / "eval.json").read_text())["metrics"]
                for s in args.seeds]
        metrics[f"{kind}_2x_steps_acc"], metrics[f"{kind}_2x_steps_acc_std"] = mean_std([r["accuracy"] for r in long])
    for key in ("completion_tokens_mean", "latency_p50_ms", "cost_per_1k"):
        metrics[f"teacher_{key}"] = report["teacher"]["metrics"][key]
    write_result("step_by_step", metrics, {"filter": report["filter"], "report": str(run_dir / "report.md")})


def equal_epochs_arm(overrides: list[str], run_dir: Path, steps: int) -> Path:
    """Step-by-step students trained `steps` steps on the very same generated data (copied over)."""
    name = "step_by_step_2x_steps"
    target = WORK / name
    for sub in ("data", "generated"):
        if not (target / sub).exists():
            shutil.copytree(run_dir / sub, target / sub)
    cfg = load_textkd_config(None, [*overrides, f"name={name}", "kinds=[label_only, step_by_step]",
                                    f"train.steps={steps}", f"train.eval_every={steps}"])
    return run_textkd(cfg, resume=(target / "config.yaml").is_file())


def concurrency_speed(cfg, run_dir: Path, n: int) -> dict[str, float]:
    """Requests/s of `n` eval prompts at concurrency 1 and 4, one after the other on one server."""
    rows = [json.loads(line) for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines()][:n]
    prompts = prompt_rows(cfg.prompt, rows, "eval")
    rates = {}
    with open_teacher(cfg.teacher) as teacher:
        for c in (1, 4):
            out = WORK / "step_by_step_speed" / f"c{c}-{time.time_ns()}.jsonl"
            stats = generate(teacher, prompts, out, sampling=Sampling(**cfg.sampling.model_dump()),
                             concurrency=c, quiet=True)
            rates[c] = stats.requests_per_s
    return {"requests_per_s_c1": rates[1], "requests_per_s_c4": rates[4], "concurrency_speedup": rates[4] / rates[1]}


if __name__ == "__main__":
    main()
