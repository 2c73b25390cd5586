"""The textkd report: what each student learnt from, its scores, and a verdict with its likely cause."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from distill.core.threads import choose_threads
from distill.eval.text import retention
from distill.eval.verdict import Verdict, compare_classifiers
from distill.recipes.textkd.config import TextKDConfig
from distill.recipes.textkd.sampling import Pool
from distill.teachers.generate import (
    GenerateStats,
    stats_dict,
)


def build_report(cfg: TextKDConfig, teacher: dict[str, float], students: dict[str, dict[str, Any]],
                 filter_counts: dict[str, int], gen: dict[str, GenerateStats], kept: int,
                 pool: Pool | None = None, trained_on: dict[str, int] | None = None) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in cfg.kinds:
        runs = [s["metrics"] for s in students.values() if s["kind"] == kind]
        kinds[kind] = {k: _mean_std([r[k] for r in runs]) for k in runs[0] if isinstance(runs[0][k], (int, float))}
        kinds[kind]["retention"] = _mean_std([retention(r, teacher) for r in runs])
    return {"name": cfg.name, "kind": "textkd", "teacher": {"model": cfg.teacher.model, "backend": cfg.teacher.backend,
            "metrics": teacher}, "student_layers": cfg.student.layers, "examples": kept, "seeds": cfg.seeds,
            "filter": filter_counts, "generation": {k: stats_dict(v) for k, v in gen.items()}, "students": kinds,
            "teacher_finetune_steps": cfg.teacher.finetune.steps if cfg.teacher.finetune else 0,
            "pool": None if pool is None else {"counts": pool.counts, "label_accuracy": pool.label_accuracy},
            "train_examples": trained_on or {kind: kept for kind in cfg.kinds},
            "verdicts": paired_verdicts(cfg.kinds, students), "threads": choose_threads()}


def paired_verdicts(kinds: list[str], students: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every kind against label_only: the paired test of `distill.eval.verdict` over the eval examples
    (each student's answers, sorted by id, scored right or wrong) and every seed both kinds ran."""
    if "label_only" not in kinds:
        return {}

    def correct(kind: str) -> torch.Tensor:
        runs = sorted((s for s in students.values() if s["kind"] == kind), key=lambda s: s["seed"])
        return torch.tensor([[p["predicted"] == p["label"] for p in s["predictions"]] for s in runs])

    base = correct("label_only")
    return {kind: compare_classifiers(base, correct(kind)).to_dict() for kind in kinds if kind != "label_only"}


def _verdict(r: dict[str, Any]) -> list[str]:
    """The answer first: did any student that learnt from the teacher beat label-only training?

    *Beats* only when the paired test over the eval examples and seeds says so (`paired_verdicts`);
    else the likely cause from the measurements, and what to try.
    """
    verdicts = {k: Verdict(**v) for k, v in (r.get("verdicts") or {}).items()}
    if not verdicts:
        return []
    best = max(verdicts, key=lambda k: verdicts[k].difference)
    students, v = r["students"], verdicts[best]
    line = (f"{best} {students[best]['accuracy']['mean'] * 100:.1f}% vs label-only "
            f"{students['label_only']['accuracy']['mean'] * 100:.1f}%, {v.measured()}")
    if v.outcome == "beats":
        return [f"**{best} beats label-only training**: {line}.", ""]
    more = " With one seed, more `seeds` narrow the interval." if v.seeds < 2 and v.difference > 0 else ""
    cause = _likely_cause(r, students["label_only"]["accuracy"]["mean"])
    return [f"**No student that learnt from the teacher beats label-only training**: {line}: {v.outcome}. {cause}.{more}",
            ""]


def _likely_cause(r: dict[str, Any], label_only: float) -> str:
    teacher = r["teacher"]["metrics"]["accuracy"]
    if teacher <= label_only:
        return (f"The teacher ({teacher * 100:.1f}%) is not better than label-only training, so what it writes "
                "cannot teach more than the labels: fine-tune it on the labelled examples first (teacher.finetune)")
    if not r.get("pool"):
        return ("The teacher is better than label-only training, but its text covers only the labelled examples: "
                "give it unlabelled inputs to label (data.unlabeled_examples or data.unlabeled_path)")
    return ("The teacher is better than label-only training and labelled the pool: the students may need more "
            "steps (train.steps), or more seeds to tell them from the noise")


def _setup_line(r: dict[str, Any]) -> str:
    tuned = (f", fine-tuned {r['teacher_finetune_steps']} steps on the kept labelled examples"
             if r.get("teacher_finetune_steps") else "")
    counts = r.get("train_examples") or {}
    data = (f"on the same {r['examples']} kept examples" if len(set(counts.values())) <= 1 else
            "on " + ", ".join(f"{n} examples ({kind})" for kind, n in counts.items())
            + f" — the {r['examples']} kept labelled ones, plus the teacher-labelled pool for every kind but "
            "label_only")
    return (f"Teacher `{r['teacher']['model']}` ({r['teacher']['backend']}{tuned}); students built from teacher "
            f"layers {r['student_layers']}, trained {data}, seeds {r['seeds']}. {(r.get('threads') or {}).get('sentence', '')}")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def render_textkd_report(r: dict[str, Any]) -> str:
    """Markdown: teacher vs each way of training the student, what it costs, what the filter kept."""
    t = r["teacher"]["metrics"]
    cols = [("accuracy", "accuracy", 100, ".1f"), ("parsed", "answered", 100, ".0f"),
            ("completion_tokens_mean", "tokens out", 1, ".1f"),
            ("latency_p50_ms", "p50 latency ms", 1, ".0f"), ("cost_per_1k", "cost / 1k req", 1, ".4f")]
    lines = [f"# Teacher-generated data: {r['name']}", "", *_verdict(r), _setup_line(r), "",
             "| model | " + " | ".join(c[1] for c in cols) + " | retention |", "|---" * (len(cols) + 2) + "|",
             "| teacher | " + " | ".join(format(t[k] * s, f) for k, _, s, f in cols) + " | 1.00 |"]
    for kind, m in r["students"].items():
        cells = [f"{m[k]['mean'] * s:{f}} ± {m[k]['std'] * s:{f}}" for k, _, s, f in cols]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {m['retention']['mean']:.2f} |")
    similar = {k: m["similarity"]["mean"] for k, m in r["students"].items() if "similarity" in m}
    if similar:
        lines += ["", "ROUGE-L F1 of the student's text against the teacher's on the same prompt: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in similar.items()) + "."]
    f = r["filter"]
    if r.get("pool"):
        c, acc = r["pool"]["counts"], r["pool"]["label_accuracy"]
        lines += ["", f"Unlabelled pool: the teacher's answer named a label for {c['kept']} of {c['total']} inputs"
                  + (f"; {acc * 100:.1f}% of those labels match the held-back gold labels." if acc is not None
                     else "; no gold labels to score them.")]
    lines += ["", f"Filter: kept {f['kept']} of {f['total']} teacher responses ("
              + ", ".join(f"{k}: {v}" for k, v in f.items() if k not in ("kept", "total")) + ").", ""]
    for split, g in r["generation"].items():
        lines.append(f"Generation ({split}): {g['generated']} responses this run ({g['already_done']} prompts "
                     f"already done), {g['requests_per_s']:.2f} requests/s.")
    lines += ["", "Accuracy: the answer parsed from the output equals the gold label; answered: an answer could "
              "be read from the output at all. Cost: mean tokens × the "
              "configured price per 1M tokens. A `[label]`-task student (label_only, step_by_step) answers with "
              "the label alone; a seq_kd student writes the rationale first, and pays for it at serving time."]
    return "\n".join(lines) + "\n"
