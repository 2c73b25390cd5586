"""The task job's report: every arm's held-out success and what it cost, and a verdict per pair of
arms by the paired test over the held-out prompts and seeds (`distill.eval.verdict`)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from distill.core.threads import choose_threads
from distill.data.tasks import TaskPrompt, prompt_ids
from distill.eval.verdict import Verdict, compare_classifiers
from distill.recipes.task.config import TaskConfig

WRITTEN = ("answer_sft", "seq_kd")  # the arms that learn from written answers


def build_report(cfg: TaskConfig, teacher_success: list[float], students: dict[str, dict[str, Any]],
                 held: list[TaskPrompt], tokenizer: Any, before: float) -> dict[str, Any]:
    arms = {arm: _arm(arm, [s for s in students.values() if s["arm"] == arm], before) for arm in cfg.arms}
    return {"name": cfg.name, "kind": "task", "teacher": {"model": cfg.teacher.model, "backend": cfg.teacher.backend,
            "finetune_steps": cfg.teacher.finetune.steps if cfg.teacher.finetune else 0,
            "scoring_dtype": cfg.scoring_dtype() if cfg.teacher.backend == "local" else None,
            "success": sum(teacher_success) / len(teacher_success)},
            "score": cfg.task.model_dump(), "prompts": {"train": cfg.data.train_examples, "eval": len(held)},
            "student_layers": cfg.student.layers, "seeds": cfg.seeds, "steps": cfg.train.steps,
            "student_before": before, "arms": arms, "on_policy_start": cfg.on_policy.start,
            "verdicts": verdicts(cfg.arms, students), "context": _context(cfg, held, tokenizer),
            "threads": choose_threads()}


def _arm(arm: str, runs: list[dict[str, Any]], before: float) -> dict[str, Any]:
    """An arm's success over its seeds, and each seed's curve from the untrained student on."""
    runs = sorted(runs, key=lambda r: r["seed"])
    success = [r["success"] for r in runs]
    start = {"step": 0, "compute": 0.0, "tokens_trained": 0, "tokens_generated": 0, "success": before}
    curves = [[start, *({"step": h["step"], "compute": _compute(r["parameters"], h), "tokens_trained": h["tokens_trained"],
                         "tokens_generated": h["tokens_generated"], "success": h["val_success"]} for h in r["history"])]
              for r in runs]
    last = [c[-1] for c in curves if c]
    return {"success": {"mean": statistics.fmean(success), "std": statistics.stdev(success) if len(runs) > 1 else 0.0},
            "per_seed": success, "parameters": runs[0]["parameters"], "curves": curves,
            "train_rows": runs[0].get("train_rows"),
            "compute": statistics.fmean(c["compute"] for c in last) if last else 0.0,
            "tokens_trained": statistics.fmean(c["tokens_trained"] for c in last) if last else 0.0,
            "tokens_generated": statistics.fmean(c["tokens_generated"] for c in last) if last else 0.0}


def _compute(parameters: int, row: dict[str, Any]) -> float:
    """The student's training FLOPs so far: forward and backward over the tokens it trained on, and a
    forward per token it wrote (on-policy answers); the teacher's are not counted."""
    return 6.0 * parameters * row["tokens_trained"] + 2.0 * parameters * row["tokens_generated"]


def verdicts(arms: list[str], students: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """"b vs a" → the paired test of b against a over the held-out prompts and every seed both ran, for
    every pair of arms: each arm that learns from the teacher against every arm that learns from
    written answers, seq_kd against answer_sft, and mixed against on_policy."""
    def per_row(arm: str) -> torch.Tensor:
        runs = sorted((s for s in students.values() if s["arm"] == arm), key=lambda s: s["seed"])
        return torch.tensor([r["per_row"] for r in runs], dtype=torch.float64)

    pairs = [(b, a) for b in arms if b not in WRITTEN for a in arms if a in WRITTEN]
    if "seq_kd" in arms and "answer_sft" in arms:
        pairs.append(("seq_kd", "answer_sft"))
    if "mixed" in arms and "on_policy" in arms:
        pairs.append(("mixed", "on_policy"))
    return {f"{b} vs {a}": compare_classifiers(per_row(a), per_row(b)).to_dict() for b, a in pairs}


def _context(cfg: TaskConfig, held: list[TaskPrompt], tokenizer: Any) -> dict[str, float] | None:
    """Prompt tokens the teacher reads and the student does not (privileged context), per request, and
    what they cost at teacher.price_prompt per 1M tokens, per 1,000 requests."""
    if not any(r.context for r in held):
        return None
    saved = statistics.fmean(len(prompt_ids(tokenizer, r.teacher_messages())) - len(prompt_ids(tokenizer, r.messages))
                             for r in held)
    return {"prompt_tokens_saved": saved, "cost_saved_per_1k": 1000 * saved * cfg.teacher.price_prompt / 1e6}


def render_report(r: dict[str, Any], run_dir: Path) -> str:
    """Markdown: the verdict first, then every arm's success and cost, the curves, the settings."""
    plot = task_success_curves(run_dir, r)
    lines = [f"# Task: {r['name']}", "", *headline(r), ""]
    t = r["teacher"]
    lines += ["| model | held-out success | training prompts | student compute (FLOPs) | tokens trained | tokens written |",
              "|---|---|---|---|---|---|",
              f"| teacher `{t['model']}`{' (fine-tuned)' if t['finetune_steps'] else ''} | {100 * t['success']:.1f}% "
              "| | | | |"]
    for arm, a in r["arms"].items():
        s = a["success"]
        lines.append(f"| {arm} | {100 * s['mean']:.1f} ± {100 * s['std']:.1f}% | {a.get('train_rows') or '–'} | "
                     f"{a['compute']:.3g} | {a['tokens_trained']:,.0f} | {a['tokens_generated']:,.0f} |")
    lines += ["", f"![success]({plot.relative_to(run_dir)})", ""]
    for pair, v in r["verdicts"].items():
        b, _, a = pair.partition(" vs ")
        lines.append(f"- {Verdict(**v).sentence(b, a)}")
    if r.get("context"):
        c = r["context"]
        lines += ["", f"Privileged context: the teacher read {c['prompt_tokens_saved']:.0f} more prompt tokens per "
                  f"request than the students do; at teacher.price_prompt that is {c['cost_saved_per_1k']:.4f} per "
                  "1,000 requests saved by serving the student."]
    lines += ["", f"Students: teacher layers {r['student_layers']}, {r['steps']} steps each, seeds {r['seeds']}; "
              f"{r['prompts']['train']} training prompts, {r['prompts']['eval']} held out; before training the "
              f"student's success was {100 * r['student_before']:.1f}%. "
              + (f"on_policy and mixed learnt written answers (by kd, or by CE during kd.warm_start) for the first "
                 f"{100 * r['on_policy_start']:.0f}% of the steps before writing their own. "
                 if r.get("on_policy_start") else "") + "Success: "
              f"{r['score']['score']}" + (f" (`{r['score']['pattern']}`)" if r["score"]["score"] == "regex" else "")
              + ". Compute counts the student's own FLOPs (the teacher's scoring and writing are not in it)."
              + (f" The teacher scored answers in {r['teacher']['scoring_dtype']}." if r["teacher"].get("scoring_dtype")
                 else "") + (f" {r['threads']['sentence']}" if r.get("threads") else "")]
    return "\n".join(lines) + "\n"


def headline(r: dict[str, Any]) -> list[str]:
    """The answer first: which arm did the task best, and by how much that rises above the noise (the
    paired test against every other arm); the highest mean is not called best when the test cannot
    tell it from the others."""
    best = max(r["arms"], key=lambda a: r["arms"][a]["success"]["mean"])
    mean = r["arms"][best]["success"]["mean"]
    against = _against(best, r["verdicts"])
    wins = {other: v for other, v in against.items() if v.outcome == "beats"}
    ties = [other for other, v in against.items() if v.outcome != "beats"]
    scores = f"{100 * mean:.1f}% held-out success (teacher {100 * r['teacher']['success']:.1f}%)"
    if len(r["arms"]) == 1:
        return [f"**{best}: {scores}.**"]
    if not wins:
        return [(f"**No arm did the task detectably better than the others** by the paired test: the highest mean "
                 f"is {best}'s, {scores}; more seeds or held-out prompts narrow it.")]
    line = f"**{best} did the task best: {scores}.** It beats " + \
        "; and ".join(f"{other} by {v.measured()}" for other, v in wins.items()) + "."
    if ties:
        line += f" No detectable difference from {', '.join(ties)} by the paired test."
    return [line]


def _against(arm: str, verdicts: dict[str, dict[str, Any]]) -> dict[str, Verdict]:
    """`arm` against each arm it was tested with, as "arm vs other" whichever way the pair was written."""
    out = {}
    for pair, v in verdicts.items():
        b, _, a = pair.partition(" vs ")
        if b == arm:
            out[a] = Verdict(**v)
        elif a == arm:
            out[b] = Verdict(**v).reversed()
    return out


def task_success_curves(run_dir: Path, report: dict[str, Any]) -> Path:
    """Held-out task success against the student's training compute, one line per arm and seed, with
    the teacher's success as a line: which way of learning reaches a success soonest."""
    from distill.eval.figures import pyplot, save_figure  # matplotlib only when a report is drawn

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (arm, a) in enumerate(report["arms"].items()):
        for i, curve in enumerate(a["curves"]):
            ax.plot([c["compute"] for c in curve], [100 * c["success"] for c in curve], marker="o", markersize=3,
                    color=colours[n % len(colours)], alpha=0.8, label=arm if i == 0 else None)
    ax.axhline(100 * report["teacher"]["success"], color="grey", linestyle="--", label="teacher")
    ax.set(xlabel="student training compute (FLOPs: 6·params·tokens trained + 2·params·tokens written)",
           ylabel="held-out success (%)", title="Task success as the students train")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, run_dir / "plots" / "success.png")
