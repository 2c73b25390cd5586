"""End to end on BBC News, with a teacher better than label-only training of the student:
SmolLM2-135M-Instruct, served by `distill serve` and called over HTTP, rationalises the 150 labelled
articles (told their gold topic); it is then fine-tuned on them (`teacher.finetune`) and, served
again, labels and rationalises an unlabelled pool of 1,000 other articles and answers the eval set.
4-layer students (4/30 of its layers, built from the base model) are trained, at equal steps:
  label_only    the gold labels of the labelled articles alone (the plain student);
  pseudo_label  those and the teacher's labels on the pool;
  step_by_step  those, plus the teacher's rationales as a second task (Hsieh et al., 2023);
over 3 seeds. Also: generation requests/s with 1 vs 4 concurrent requests on the same server.

    python benchmarks/step_by_step.py                 # ≈ 60 min on 2 CPU cores
    python benchmarks/step_by_step.py --seeds 0 --train-examples 40 --pool 200   # a quick look

The job is the built-in `distill textkd` job (src/distill/configs/bbc_step_by_step.yaml) with three
seeds. Writes benchmarks/results/step_by_step.json; the run (report.md, generated JSONL, the
fine-tuned teacher) stays in benchmarks/work/step_by_step_pool_<steps>steps and resumes if
interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import WORK, mean_std, write_result

from distill.recipes.textkd.config import load_textkd_config
from distill.recipes.textkd.pipeline import open_teacher, run_textkd
from distill.recipes.textkd.sampling import prompt_rows
from distill.teachers.generate import generate
from distill.teachers.text import Sampling

NAME = "step_by_step_pool"  # + the student steps: one run directory per student budget
STEPS = 400  # 400 × 8 rows: ≈ 2.8 passes over labelled ∪ pool for pseudo_label (≈ 21 for label_only)
KINDS = ("label_only", "pseudo_label", "step_by_step")  # the built-in job's


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-examples", type=int, default=150)
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--pool", type=int, default=1000, help="unlabelled articles the teacher labels")
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps of every student")
    ap.add_argument("--concurrency-prompts", type=int, default=24)
    args = ap.parse_args()
    cfg = job_config(args.seeds, args.train_examples, args.eval_examples, args.pool, args.steps)
    run_dir = run_textkd(cfg, resume=(cfg.output_dir / cfg.name / "config.yaml").is_file())
    report = json.loads((run_dir / "report.json").read_text())
    speed = concurrency_speed(cfg, run_dir, args.concurrency_prompts)
    metrics = {"teacher_acc": report["teacher"]["metrics"]["accuracy"],
               "kept_fraction": report["filter"]["kept"] / report["filter"]["total"],
               "examples": report["examples"], "seeds": len(args.seeds), **speed,
               "pool_labelled": report["pool"]["counts"]["kept"], "pool_label_acc": report["pool"]["label_accuracy"],
               "teacher_finetune_steps": report["teacher_finetune_steps"], "student_steps": cfg.train.steps}
    for kind in KINDS:
        runs = [json.loads((run_dir / "students" / f"{kind}-s{s}" / "eval.json").read_text())["metrics"]
                for s in args.seeds]
        for key, short in (("accuracy", "acc"), ("completion_tokens_mean", "tokens_out"),
                           ("latency_p50_ms", "p50_ms"), ("cost_per_1k", "cost_per_1k")):
            m, s = mean_std([r[key] for r in runs])
            metrics[f"{kind}_{short}"], metrics[f"{kind}_{short}_std"] = m, s
    for key in ("completion_tokens_mean", "latency_p50_ms", "cost_per_1k"):
        metrics[f"teacher_{key}"] = report["teacher"]["metrics"][key]
    name = "step_by_step" if args.steps == STEPS else f"step_by_step_{args.steps}steps"  # another budget
    write_result(name, metrics, {"filter": report["filter"], "report": str(run_dir / "report.md")})


def job_config(seeds: list[int], train_examples: int = 150, eval_examples: int = 100, pool: int = 1000,
               steps: int = STEPS):
    """The benchmark's `distill textkd` config (kd_wins' teacher-generated-data scenario reads its run).

    A run for a new student budget starts from the data, teacher text and fine-tuned teacher of an
    earlier run with the same settings otherwise (they do not depend on the students' steps).
    """
    name = f"{NAME}_{steps}steps"
    cfg = load_textkd_config(None, [f"output_dir={WORK}", f"name={name}", f"seeds={json.dumps(seeds)}",
                                    f"data.train_examples={train_examples}", f"data.eval_examples={eval_examples}",
                                    f"data.unlabeled_examples={pool}", f"train.steps={steps}",
                                    f"train.eval_every={steps}", f"train.save_every={steps // 4}"])
    target = WORK / name
    if not (target / "config.yaml").is_file():
        for sibling in sorted(WORK.glob(f"{NAME}_*steps")):
            if _same_job(sibling, cfg):
                for part in ("data", "generated", "teacher"):
                    if (sibling / part).is_dir() and not (target / part).exists():
                        shutil.copytree(sibling / part, target / part, ignore=shutil.ignore_patterns("last*"))
                break
    return cfg


def _same_job(run_dir: Path, cfg) -> bool:
    """Whether an earlier run differs from `cfg` in nothing but the students' training and seeds."""
    import yaml

    saved = run_dir / "config.yaml"
    if not saved.is_file() or not (run_dir / "teacher" / "model" / "config.json").is_file():
        return False
    old = yaml.safe_load(saved.read_text())
    new = cfg.model_dump(mode="json")
    return all(old.get(k) == new.get(k) for k in new if k not in ("name", "train", "seeds", "quiet"))


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
