"""On-policy distillation from prompts vs learning from written answers, judged by task success.

    python benchmarks/on_policy.py                   # teacher once, then 3 seeds, each in its own process
    python benchmarks/on_policy.py --part remote     # the on-policy arm with the teacher behind distill serve
    python benchmarks/on_policy.py --part warm       # on-policy after a supervised start (on_policy.start)
    python benchmarks/on_policy.py --table           # gather what is saved into the results file

Task: the built-in BBC topics (`builtin:bbc_topics`): an article's first 40 words, answered with its
topic in one word (business, entertainment, politics, sport, tech), scored by exact match, 200 held-out
prompts. 1,000 training prompts, of which the first `ANSWERED` have reference answers (answer SFT
learns from those; seq-KD, on-policy and mixed from every training prompt, as when answers cost and
prompts do not). Teacher: SmolLM2-135M-Instruct fine-tuned on the answered prompts (once, shared by
every seed); students: its first layer (0.24x the parameters), `STEPS` steps of 8 prompts for every
arm. seq_kd learns the teacher's greedy answers; on_policy its own answers at temperature 1, each
token scored by the teacher (forward KL, the task job's default); mixed does so on half the steps and
learns the teacher's answers, scored token by token, on the other half (GKD's lambda = 0.5). Every seed
is its own run of the job (`runs/s<seed>`), sharing the fine-tuned teacher and its journaled answers,
so a killed benchmark re-trains at most one stage.

Keys: `teacher_success`; `<arm>_success_mean/_std` for answer_sft, seq_kd, on_policy, mixed (3 seeds);
`gap_closed_on_policy` = (on_policy − best written) / (teacher − best written), the best written arm
being the better of answer SFT and seq-KD; `compute_ratio_vs_seq_kd` = the student compute at which
on-policy (mean curve over seeds) first reaches seq-KD's final mean success ÷ seq-KD's whole compute
(NaN when it never does); `remote_success_mean/_std` (the on-policy arm with the teacher behind
`distill serve`, `--part remote`); `warm_success_mean/_std` (`--part warm`: the on-policy arm that
learns the teacher's answers by CE for the first half of its steps (seq-KD) and then its own answers
under reverse KL, the supervised start and KL direction on-policy distillation is usually run with;
`on_policy.start=0.5 kd.warm_start=100 kd.divergence=reverse_kl`; reverse KL on the teacher's answers
from the untrained student instead, without kd.warm_start, left it at 0% after 200 steps); the paired verdicts (`<b>_vs_<a>_diff`, `_low`, `_high`, over the
held-out prompts and the 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from common import WORK, mean_std, write_result

OUT = WORK / "on_policy"
ANSWERED = 150
STEPS = 200
OVERRIDES = [f"output_dir={OUT / 'runs'}", "quiet=true", "data.source=builtin:bbc_topics", "data.train_examples=1000",
             "data.eval_examples=200", f"data.answered={ANSWERED}", "task.score=exact", "answer_tokens=8",
             "sampling.max_tokens=8", "on_policy.max_new_tokens=8", "teacher.finetune.steps=60",
             "teacher.finetune.eval_every=60", "teacher.finetune.save_every=20", f"train.steps={STEPS}",
             "arms=[answer_sft, seq_kd, on_policy, mixed]"]
SEEDS = (0, 1, 2)
ARMS = ("answer_sft", "seq_kd", "on_policy", "mixed")


def config(name: str, seed: int, extra: list[str] | None = None):
    from distill.recipes.task.config import load_task_config

    return load_task_config(None, [*OVERRIDES, f"name={name}", f"seeds=[{seed}]", *(extra or [])])


def shared_teacher() -> str:
    """The teacher fine-tuned once on the answered prompts (as seed 0's job would), for every run."""
    from distill.recipes.task.pipeline import load_prompts, task_teacher

    cfg = config("teacher", 0)
    return task_teacher(cfg, load_prompts(cfg)[0], OUT / "teacher")


PARTS = {"main": [], "remote": ["teacher.backend=serve", "arms=[on_policy]"],
         "warm": ["arms=[on_policy]", "on_policy.start=0.5", f"kd.warm_start={STEPS // 2}", "kd.divergence=reverse_kl"]}


def run_seed(seed: int, part: str) -> None:
    from distill.recipes.task.pipeline import run_task

    teacher = shared_teacher()
    name = f"{part}-s{seed}" if part != "main" else f"s{seed}"
    cfg = config(name, seed, [f"teacher.model={teacher}", "teacher.finetune=null", *PARTS[part]])
    first = OUT / "runs" / "s0" / "generated"
    mine = OUT / "runs" / name / "generated"
    if first.is_dir() and not mine.exists() and part != "remote":  # the same teacher and sampling: its journal
        shutil.copytree(first, mine)
    run_task(cfg, resume=(OUT / "runs" / name / "config.yaml").is_file())


def students(prefix: str) -> dict[str, list[dict]]:
    """Every saved student of runs `<prefix>s<seed>`, by arm, in seed order."""
    out: dict[str, list[dict]] = {}
    for seed in SEEDS:
        for path in sorted((OUT / "runs" / f"{prefix}s{seed}" / "students").glob("*/eval.json")):
            row = json.loads(path.read_text())
            out.setdefault(row["arm"], []).append(row)
    return out


def metrics() -> dict[str, float]:
    from distill.eval.verdict import compare_classifiers
    from distill.recipes.task.report import _compute

    m: dict[str, float] = {}
    teacher = json.loads((OUT / "runs" / "s0" / "report.json").read_text())["teacher"]
    m["teacher_success"] = 100 * teacher["success"]
    runs = students("")
    for arm in ARMS:
        m[f"{arm}_success_mean"], m[f"{arm}_success_std"] = mean_std([100 * r["success"] for r in runs[arm]])
        m.update({f"{arm}_success_s{r['seed']}": 100 * r["success"] for r in runs[arm]})
    written = max(("answer_sft", "seq_kd"), key=lambda a: m[f"{a}_success_mean"])
    gap = m["teacher_success"] - m[f"{written}_success_mean"]
    m["gap_closed_on_policy"] = (m["on_policy_success_mean"] - m[f"{written}_success_mean"]) / gap if gap > 0 \
        else float("nan")
    curves = {arm: [[(_compute(r["parameters"], h), 100 * h["val_success"]) for h in r["history"]] for r in runs[arm]]
              for arm in ("seq_kd", "on_policy")}
    target, seq_kd_compute = m["seq_kd_success_mean"], statistics_mean([c[-1][0] for c in curves["seq_kd"]])
    mean_curve = [(statistics_mean([c[i][0] for c in curves["on_policy"]]),
                   statistics_mean([c[i][1] for c in curves["on_policy"]])) for i in range(len(curves["on_policy"][0]))]
    reached = next((compute for compute, success in mean_curve if success >= target), None)
    m["compute_ratio_vs_seq_kd"] = reached / seq_kd_compute if reached is not None else float("nan")
    per_row = {arm: torch.tensor([r["per_row"] for r in runs[arm]], dtype=torch.float64) for arm in ARMS}
    m["gap_closed_mixed"] = (m["mixed_success_mean"] - m[f"{written}_success_mean"]) / gap if gap > 0 \
        else float("nan")
    for b, a in (("on_policy", "seq_kd"), ("on_policy", "answer_sft"), ("seq_kd", "answer_sft"),
                 ("mixed", "seq_kd"), ("mixed", "on_policy")):
        v = compare_classifiers(per_row[a], per_row[b])
        m[f"{b}_vs_{a}_diff"], m[f"{b}_vs_{a}_low"], m[f"{b}_vs_{a}_high"] = v.difference, v.low, v.high
    for part in ("remote", "warm"):
        done = students(f"{part}-").get("on_policy", [])
        if done:
            m[f"{part}_success_mean"], m[f"{part}_success_std"] = mean_std([100 * r["success"] for r in done])
            m.update({f"{part}_success_s{r['seed']}": 100 * r["success"] for r in done})
    warm = students("warm-").get("on_policy", [])
    if len(warm) == len(runs["seq_kd"]):
        v = compare_classifiers(per_row["seq_kd"], torch.tensor([r["per_row"] for r in warm], dtype=torch.float64))
        m["warm_vs_seq_kd_diff"], m["warm_vs_seq_kd_low"], m["warm_vs_seq_kd_high"] = v.difference, v.low, v.high
    m["seeds"] = len(runs["on_policy"])
    return m


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=list(PARTS), default="main")
    p.add_argument("--one", type=int, metavar="SEED", help="run one seed (in this process)")
    p.add_argument("--table", action="store_true", help="only gather what is saved")
    args = p.parse_args()
    if args.one is not None:
        run_seed(args.one, args.part)
        return
    if not args.table:
        for seed in SEEDS:  # each seed in a fresh process; a finished run only reads its report back
            subprocess.run([sys.executable, __file__, "--part", args.part, "--one", str(seed)], check=True)
    write_result("on_policy", metrics(), {"task": "BBC topics in one word (builtin:bbc_topics), 1,000 training "
                 f"prompts of which {ANSWERED} answered, 200 held out; SmolLM2-135M-Instruct fine-tuned -> 1-layer "
                 f"students, {STEPS} steps of 8 prompts per arm"})


if __name__ == "__main__":
    main()
