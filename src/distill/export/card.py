"""Model cards: the README.md (YAML front matter + text) the Hugging Face Hub, `transformers` users and
`vllm` read beside a model — what the model was distilled from (and that teacher's licence), on what,
with which settings, and what it measured against its teacher and the same student trained alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.core.files import atomic_write_text

HUB_IDS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # what the built-ins are


def lm_card(report: dict[str, Any], student: str = "distilled") -> str:
    """The card of an LM run's `student` (a `distill lm` report.json)."""
    t, d, models = report["teacher"], report["data"], report["models"]
    kd = report.get("kd") or {}
    teacher_id = HUB_IDS.get(t["model"], t["model"])
    front: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                             "tags": ["distillation", "knowledge-distillation", "distill"]}
    if t.get("licence"):
        front["license"] = t["licence"]
    if "/" in teacher_id and not Path(teacher_id).exists():  # a hub id, not a local directory
        front["base_model"] = teacher_id
    taught_by = "teacher_adapted" if "teacher_adapted" in models else "teacher"
    s = models[student]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {report['name']}: a student distilled from {teacher_id}", "",
             f"{s['params'] / 1e6:.1f}M parameters ({s['params'] / models['teacher']['params']:.2f}× the teacher), "
             f"{models['teacher']['forward_ms'] / s['forward_ms']:.1f}× faster per block on the machine that "
             f"measured it ({report['machine']}).", ""]
    if t.get("licence_warning"):
        lines += [f"> Licence: the teacher's licence ({t['licence']}) {t['licence_warning']}.", ""]
    lines += [f"**Data:** {d['corpus']}, {d['train_blocks']} training blocks of {d['seq_len']} tokens, "
              f"{d['tokens_seen']:,} tokens seen; {d['val_blocks']} held-out blocks.", ""]
    if kd:
        lines += [f"**Distillation:** {kd['ratio']:g} × {kd['divergence']} (T = {kd['temperature']:g}) to the "
                  f"{taught_by.replace('_', ' ')} + {1 - kd['ratio']:g} × next-token CE; teacher signal: "
                  f"{report['teacher_signal']}" + (f" (top-{report['top_k']})" if report.get("top_k") else "")
                  + ".", ""]
    lines += ["**Measured on the held-out blocks:**", "",
              "| model | params | perplexity | KL to teacher | top-1 agreement |", "|---|---:|---:|---:|---:|"]
    for name, m in models.items():
        kl = f"{m['kl_teacher']:.3f}" if "kl_teacher" in m else "–"
        agree = f"{100 * m['agreement']:.1f}%" if "agreement" in m else "–"
        mark = " (this model)" if name == student else ""
        lines.append(f"| {name}{mark} | {m['params'] / 1e6:.1f}M | {m['ppl']:.2f} | {kl} | {agree} |")
    lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")", "```", "",
              f"Made with `distill lm` on {report['date']}."]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, text: str) -> Path:
    path = Path(directory) / "README.md"
    atomic_write_text(path, text)
    return path
