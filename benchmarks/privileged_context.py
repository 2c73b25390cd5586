"""Privileged-context distillation: a student learns to answer without the long context its teacher reads.

    python benchmarks/privileged_context.py            # lookup teacher once, then 3 seeds in their own processes
    python benchmarks/privileged_context.py --table    # gather what is saved into the results file

Task: `distill task`'s built-in glossary (`builtin:glossary`): "What is the Zorblax word for bread?",
answered with the invented word a glossary of 40 words defines. The glossary and the instructions
(about 320 prompt tokens) are every row's `context`, read by the teacher only. Held-out questions are
worded in two phrasings no training prompt uses.

SmolLM2-135M-Instruct cannot look words up in a context as given (0 of 40 right with it), so the
teacher is first taught the *skill* on glossaries of 50 other seeds (different words for every
English word), then asked about seed 0's glossary, which it has never seen: with the context it
answers; without it, it cannot know. Students: its first layer (0.24× the parameters), trained by
seq_kd (SFT on the teacher's answers) and on_policy (its own answers scored by the teacher with the
context), 150 steps.

Keys: `teacher_with_context`, `teacher_without_context`, `student_before` (success without context,
untrained), `<arm>_success_mean/_std`, `retained_share` (the better arm's mean ÷ the teacher's with
context; target ≥ 0.9), `prompt_tokens_saved` (per request), `cost_saved_per_1k` (at the config's
teacher.price_prompt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import WORK, mean_std, write_result

OUT = WORK / "privileged_context"
SEEDS = (0, 1, 2)
ARMS = ("seq_kd", "on_policy")
SKILL_SEEDS = range(1, 51)  # glossaries the teacher learns to read; seed 0's is the task's
STEPS = 150
OVERRIDES = [f"output_dir={OUT / 'runs'}", "quiet=true", "data.source=builtin:glossary", "data.train_examples=400",
             "data.eval_examples=80", "task.score=exact", "answer_tokens=8", "on_policy.max_new_tokens=8",
             "sampling.max_tokens=8", "arms=[seq_kd, on_policy]", "student.layers=[0]", f"train.steps={STEPS}",
             "train.eval_every=50", "train.save_every=50", "teacher.finetune=null", "teacher.price_prompt=0.15"]


def lookup_teacher() -> str:
    """SmolLM2-135M-Instruct taught to answer from a glossary in its context (other seeds' glossaries)."""
    from distill.data.builtin_tasks import builtin_task
    from distill.recipes.textkd.finetune import finetune_on_rows
    from distill.training.config import LMTrainConfig, OptimizerConfig

    rows = [{"messages": [*r.teacher_messages(), {"role": "assistant", "content": r.reference}]}
            for s in SKILL_SEEDS for r in builtin_task("glossary", 24, s, offset=40)]
    train = LMTrainConfig(steps=150, batch_size=8, warmup_steps=10, eval_every=150, save_every=25,
                          optimizer=OptimizerConfig(lr=3e-4, weight_decay=0.01))
    return finetune_on_rows("builtin:smollm2-135m-instruct", rows, train, seq_len=512, stage=OUT / "teacher",
                            device="cpu", quiet=False, keep_state=False, source="glossaries of other seeds")


def teacher_without_context(teacher: str) -> float:
    """The teacher asked seed 0's held-out questions without the glossary."""
    done = OUT / "teacher_without_context.json"
    if done.is_file():
        return json.loads(done.read_text())["success"]
    from distill.data.builtin_tasks import builtin_task
    from distill.data.tasks import prompt_ids
    from distill.eval.task import TaskScore, answer_greedily
    from distill.models.causal_lm import load_causal_lm, load_tokenizer

    held = builtin_task("glossary", 80, 0)
    tokenizer = load_tokenizer(teacher)
    outputs = answer_greedily(load_causal_lm(teacher), tokenizer, [prompt_ids(tokenizer, r.messages) for r in held],
                              max_new_tokens=8)
    success = sum(TaskScore("exact")(r, o) for r, o in zip(held, outputs)) / len(held)
    done.write_text(json.dumps({"success": success, "outputs": outputs}, indent=2))
    return success


def run_seed(seed: int) -> None:
    from distill.recipes.task.config import load_task_config
    from distill.recipes.task.pipeline import run_task

    cfg = load_task_config(None, [*OVERRIDES, f"name=s{seed}", f"seeds=[{seed}]", f"teacher.model={lookup_teacher()}"])
    run_task(cfg, resume=(OUT / "runs" / f"s{seed}" / "config.yaml").is_file())


def metrics() -> dict[str, float]:
    done = [OUT / "runs" / f"s{seed}" / "report.json" for seed in SEEDS]
    reports = [json.loads(p.read_text()) for p in done if p.is_file()]  # --table: the seeds finished so far
    first = reports[0]
    m = {"teacher_with_context": 100 * first["teacher"]["success"],
         "teacher_without_context": 100 * teacher_without_context(lookup_teacher()),
         "student_before": 100 * first["student_before"],
         "prompt_tokens_saved": first["context"]["prompt_tokens_saved"],
         "cost_saved_per_1k": first["context"]["cost_saved_per_1k"]}
    for arm in ARMS:
        m[f"{arm}_success_mean"], m[f"{arm}_success_std"] = mean_std([100 * r["arms"][arm]["success"]["mean"]
                                                                     for r in reports])
    m["seeds"] = len(reports)
    best = max(ARMS, key=lambda a: m[f"{a}_success_mean"])
    m["retained_share"] = m[f"{best}_success_mean"] / m["teacher_with_context"] if m["teacher_with_context"] else 0.0
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", type=int, metavar="SEED", help="run one seed (in this process)")
    p.add_argument("--table", action="store_true", help="only gather what is saved")
    args = p.parse_args()
    if args.one is not None:
        run_seed(args.one)
        return
    if not args.table:
        lookup_teacher()
        for seed in SEEDS:
            subprocess.run([sys.executable, __file__, "--one", str(seed)], check=True)
    write_result("privileged_context", metrics(), {"task": "builtin:glossary (seed 0's glossary as privileged "
                 "context, about 320 tokens); teacher SmolLM2-135M-Instruct taught glossary lookup on 50 other "
                 "glossaries; 1-layer students"})


if __name__ == "__main__":
    main()
