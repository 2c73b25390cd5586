"""What a person reads after `distill lm`: report.md (the models side by side, what taught them, the
learning curves) and a model card beside each exported student, both drawn from report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.core.files import atomic_write_text
from distill.eval.doctor import lm_kd_settings
from distill.eval.report import doctor_lines


def render_lm(run_dir: Path) -> Path:
    """report.md and plots/lm_curves.png of an LM run, from its report.json and metrics (also `distill
    report RUN_DIR`)."""
    from distill.eval.report import lm_learning_curves  # matplotlib only when a report is drawn
    from distill.export.card import lm_card, write_card

    report = json.loads((run_dir / "report.json").read_text())
    plot = lm_learning_curves(run_dir, report)
    atomic_write_text(run_dir / "report.md", render_lm_report(report, [plot.relative_to(run_dir)]))
    for student in ("distilled", "baseline"):  # each exported model says what it is and what it measured
        if (run_dir / student / "model" / "config.json").is_file():
            write_card(run_dir / student / "model", lm_card(report, student))
    return run_dir / "report.md"


HOLDOUT_WORDS = {"documents": "of whole held-out documents", "tail": "of the text's last part, held out"}


def render_lm_report(report: dict[str, Any], plots: list[Path] | None = None) -> str:
    """Markdown for a person: what was distilled, how close the student is, at what cost, how it learnt."""
    t = report["teacher"]
    lines = [f"# LM distillation report: {report['name']}", "",
             f"{report['date']} · {report['machine']}. {(report.get('threads') or {}).get('sentence', '')}", "",
             *(doctor_lines(report["doctor"]) if report.get("doctor") else []),
             f"Teacher `{t['model']}`, licence **{t['licence'] or 'unknown'}**."]
    if t["licence_warning"]:
        lines += ["", f"> ⚠ Licence: {t['licence_warning']}."]
    d, kd = report["data"], lm_kd_settings(report)
    lines += ["", f"Data: {d['corpus']}, {d['train_blocks']} training blocks of {d['seq_len']} tokens "
              f"({d['tokens_seen']:,} tokens seen per student{_docs(d.get('train_documents'))}), "
              f"{d['val_blocks']} held-out blocks ({HOLDOUT_WORDS.get(d.get('holdout'), 'drawn at random')}"
              f"{_docs(d.get('val_documents'))}).",
              f"Loss: {kd['ratio']:g} × {kd['divergence']} (T={kd['temperature']:g}) + "
              f"{1 - kd['ratio']:g} × CE"
              + (f", CE only for the first {kd['warm_start']} steps" if kd.get("warm_start") else "")
              + f"; teacher signal: {report['teacher_signal']}"
              + (f" (top-{report['top_k']})" if report["teacher_signal"] == "cached" else "") + ".", "",
              *_adapt_line(report.get("teacher_adapt")), *_teachers_line(report.get("teachers")),
              "| model | params | held-out ppl | bits per byte | KL to teacher | top-1 agreement | forward ms (1 block) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        kl = f"{m['kl_teacher']:.3f}" if "kl_teacher" in m else "–"
        agree = f"{100 * m['agreement']:.1f}%" if "agreement" in m else "–"
        bpb = f"{m['bpb']:.3f}" if "bpb" in m else "–"  # reports from before bits per byte have none
        ms = f"{m['forward_ms']:.1f}" if "forward_ms" in m else "served"
        lines.append(f"| {name} | {m['params'] / 1e6:.1f}M | {m['ppl']:.2f} | {bpb} | {kl} | {agree} | {ms} |")
    s, cross_tok = report["summary"], report.get("cross_tokenizer")
    whose = f"`{s['teacher']}`'s" if s.get("teacher", "teacher") != "teacher" else "the teacher's"
    quality = (f"its bits per byte are {s['bpb_ratio']:.2f}× {whose} (perplexities of different "
               "vocabularies do not compare)" if cross_tok else f"its perplexity is {s['ppl_ratio']:.2f}× {whose}")
    speed = f" and runs {s['speedup']:.1f}× faster" if "speedup" in s else ""
    lines += ["", f"The distilled student has {s['params_ratio']:.2f}× {whose} parameters{speed}; {quality}."]
    if report["models"]["teacher"].get("served"):
        lines.append(f"The teacher was served ({report['models']['teacher']['served']}): its log-probs came from the "
                     "server, and it never ran in this process.")
    if cross_tok:
        lines.append(f"It has its own tokenizer ({cross_tok['student_tokenizer']}) and learnt from the teacher "
                     f"({cross_tok['method']}) at the {100 * cross_tok['aligned_share']:.0f}% of its positions where "
                     "both had read the same text.")
    elif "ppl_gain_vs_baseline" in s:
        lines.append(f"Against the same student trained with plain CE, distillation divides perplexity by "
                     f"{s['ppl_gain_vs_baseline']:.2f}.")
    if report["kl_over"] != "full vocabulary":
        lines += ["", f"KL to the teacher is measured over the teacher's cached {report['kl_over']} bin "
                  "(a lower bound of the full-vocabulary KL)."]
    for plot in plots or []:
        lines += ["", f"![learning curves]({plot.as_posix()})"]
    return "\n".join(lines) + "\n"


def _teachers_line(teachers: dict[str, Any] | None) -> list[str]:
    """Several teachers: who, at what weight, and how tokens pick among them."""
    if not teachers:
        return []
    total = sum(teachers["weights"].values())
    who = ", ".join(f"{name} (`{teachers['models'][name]}`, {w / total:.2f})" for name, w in teachers["weights"].items())
    how = {"fixed": "each token learns from all of them at these weights",
           "confidence": "each token weighs them by these weights × their probability of the actual next token"
           }[teachers["weighting"]]
    if teachers["route"]:
        how = f"each row learns from the teacher its `{teachers['route']}` key names; rows without one: {how}"
    return [f"Teachers: {who}; {how}.", ""]


def _adapt_line(adapt: dict[str, Any] | None) -> list[str]:
    if not adapt:
        return []
    how = f"LoRA r={adapt['lora']['r']}" if adapt.get("lora") else "every weight"
    return [f"The teacher was first fine-tuned on the training blocks ({adapt['steps']} steps of next-token CE "
            f"at lr {adapt['lr']:g}, {how}): `teacher_adapted` below, which taught the students.", ""]


def _docs(n: int | None) -> str:
    """", from 12 documents" (nothing where the run did not record them)."""
    return "" if n is None else f", from {n:,} document{'s' if n != 1 else ''}"
