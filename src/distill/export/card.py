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
    ref = report.get("summary", {}).get("teacher", taught_by)  # the report's one reference for speed-ups
    s = models[student]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {report['name']}: a student distilled from {teacher_id}", "",
             f"{s['params'] / 1e6:.1f}M parameters ({s['params'] / models['teacher']['params']:.2f}× the teacher)"
             + (f", {models[ref]['forward_ms'] / s['forward_ms']:.1f}× faster per block than the {ref.replace('_', ' ')} "
                f"on the machine that measured it ({report['machine']})." if "forward_ms" in models[ref] else "."), ""]
    if t.get("licence_warning"):
        lines += [f"> Licence: the teacher's licence ({t['licence']}) {t['licence_warning']}.", ""]
    lines += [f"**Data:** {d['corpus']}, {d['train_blocks']} training blocks of {d['seq_len']} tokens, "
              f"{d['tokens_seen']:,} tokens seen; {d['val_blocks']} held-out blocks"
              + {"documents": " of whole documents not trained on.", "tail": " of the text's last part, not "
                 "trained on."}.get(d.get("holdout"), "."), ""]
    if kd:
        lines += [f"**Distillation:** {kd['ratio']:g} × {kd['divergence']} (T = {kd['temperature']:g}) to the "
                  f"{taught_by.replace('_', ' ')} + {1 - kd['ratio']:g} × next-token CE; teacher signal: "
                  f"{report['teacher_signal']}" + (f" (top-{report['top_k']})" if report.get("top_k") else "")
                  + ".", ""]
    lines += ["**Measured on the held-out blocks:**", "",
              "| model | params | perplexity | bits per byte | KL to teacher | top-1 agreement |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        kl = f"{m['kl_teacher']:.3f}" if "kl_teacher" in m else "–"
        agree = f"{100 * m['agreement']:.1f}%" if "agreement" in m else "–"
        bpb = f"{m['bpb']:.3f}" if "bpb" in m else "–"
        mark = " (this model)" if name == student else ""
        lines.append(f"| {name}{mark} | {m['params'] / 1e6:.1f}M | {m['ppl']:.2f} | {bpb} | {kl} | {agree} |")
    lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")", "```", "",
              f"Made with `distill lm` on {report['date']}."]
    return "\n".join(lines) + "\n"


ARM_TEXT = {"answer_sft": "supervised fine-tuning on the reference answers",
            "seq_kd": "supervised fine-tuning on the teacher's answers to the training prompts (sequence-level KD)",
            "on_policy": "on-policy distillation: it answered the training prompts itself and the teacher scored "
                         "every token of its answers",
            "mixed": "on-policy distillation on part of the steps, the teacher scoring written answers on the rest"}


def task_card(report: dict[str, Any], arm: str, seed: int) -> str:
    """The card of one student of a `distill task` run (its report.json): what it learnt from, and its
    held-out task success beside the teacher's and the other arms' with the paired verdicts."""
    t = report["teacher"]
    teacher_id = HUB_IDS.get(t["model"], t["model"])
    front: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                             "tags": ["distillation", "knowledge-distillation", "on-policy-distillation", "distill"]}
    if "/" in teacher_id and not Path(teacher_id).exists():
        front["base_model"] = teacher_id
    a = report["arms"][arm]
    mine = a["per_seed"][report["seeds"].index(seed)]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {report['name']}: a {a['parameters'] / 1e6:.1f}M-parameter student taught by {teacher_id}", "",
             f"Built from the teacher's layers {report['student_layers']} and trained by {ARM_TEXT[arm]} "
             f"({report['steps']} steps, seed {seed}, {report['prompts']['train']} training prompts).", "",
             f"**Held-out task success** ({report['prompts']['eval']} prompts it never trained on, "
             f"{report['score']['score']}): this model {100 * mine:.1f}%; the teacher "
             f"{100 * t['success']:.1f}%; before training {100 * report['student_before']:.1f}%.", "",
             "| way of training | success (mean ± std over seeds) |", "|---|---:|"]
    for name, other in report["arms"].items():
        mark = " (this model's)" if name == arm else ""
        lines.append(f"| {name}{mark} | {100 * other['success']['mean']:.1f} ± {100 * other['success']['std']:.1f}% |")
    from distill.eval.verdict import Verdict

    said = [Verdict(**v).sentence(*pair.split(" vs ")) for pair, v in report["verdicts"].items() if arm in pair]
    lines += ["", *(f"- {s}" for s in said), ""] if said else [""]
    if report.get("context"):
        lines += [f"It answers without the {report['context']['prompt_tokens_saved']:.0f} prompt tokens of context "
                  "its teacher read.", ""]
    lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")",
              "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"...\"}], add_generation_prompt=True,"
              " return_tensors=\"pt\")", "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:]))",
              "```", "", "Made with `distill task`."]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, text: str) -> Path:
    path = Path(directory) / "README.md"
    atomic_write_text(path, text)
    return path


KNOWN_LICENCES = {"all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}


def classifier_card(*, name: str, which: str, fmt: str, teacher: dict[str, Any], student: dict[str, Any],
                    data: dict[str, Any], kd: dict[str, Any] | None, report: dict[str, Any] | None,
                    check: dict[str, Any] | None = None, inputs: list[str] | None = None,
                    custom_code: bool = True) -> str:
    """The card of a classifier export (`distill export`): `teacher`/`student` are their config
    sections, `data` the data section with the class names, `report` the run's report.json when
    it sits beside the checkpoint (its measured quality and speed), `check` the export's own parity;
    `custom_code`: an HF export that loads through its `modeling_distill.py`."""
    text = data.get("modality") == "text"
    model_id = (teacher.get("kwargs") or {}).get("model") if teacher.get("arch") == "hf_encoder" else None
    hub_id, licence = KNOWN_LICENCES.get(Path(str(model_id)).name, (model_id, None)) if model_id else (None, None)
    front: dict[str, Any] = {"library_name": {"hf": "transformers", "onnx": "onnx"}.get(fmt, "safetensors"),
                             "pipeline_tag": "text-classification" if text else "image-classification",
                             "tags": ["distillation", "knowledge-distillation", "distill"]}
    if licence:
        front["license"] = licence
    if hub_id and "/" in hub_id and not Path(hub_id).exists():
        front["base_model"] = hub_id
    what = "teacher" if which == "teacher" else "student"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name}: the {what} of a `distill` run", "",
             f"**Teacher:** {_arch(teacher)}" + (f" (licence {licence})" if licence else "") + ".",
             f"**Student:** {_arch(student)}.",
             f"**Data:** {data.get('name')}, {len(data.get('classes') or [])} classes: "
             f"{', '.join(map(str, data.get('classes') or []))}."]
    if kd and which != "teacher":
        used = ((report or {}).get("recipe") or {}).get("objective")  # what the run resolved, when known
        chosen = {k: kd.get(k) for k in ("divergence", "temperature", "ratio")}
        settings = ", ".join(f"{k} {'(the recipe’s)' if v is None else v}" for k, v in chosen.items())
        lines.append(f"**Distillation:** {used or settings}.")
    lines.append("")
    lines += _measured(report) if report else [
        "No run report was found beside the checkpoint, so no quality or speed figures are given here; "
        "`distill eval` and `distill bench` measure them.", ""]
    if check:
        lines += [f"**Export check:** the exported model picks the same class as the trained one on "
                  f"{100 * check['agreement']:.2f}% of {int(check['n'])} test examples "
                  f"(max |logit difference| {check['max_abs_diff']:.2g}).", ""]
    lines += _usage(fmt, inputs or ["inputs"], custom_code)
    return "\n".join(lines) + "\n"


def _arch(spec: dict[str, Any]) -> str:
    kwargs = spec.get("kwargs") or {}
    inside = ", ".join(f"{k}={_public(v)}" for k, v in kwargs.items())
    return f"`{spec.get('arch')}`" + (f" ({inside})" if inside else "")


def _public(value: Any) -> Any:
    """A setting as a card shows it: a local absolute path by its last part, not where it lies here."""
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


def _measured(report: dict[str, Any]) -> list[str]:
    lines = ["**Measured on the test split** (on " + str(report.get("machine", "the run's machine")) + "):", "",
             "| model | accuracy | agreement with teacher | params | size (MB) | latency b1 p50 (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in report.get("models", {}).items():
        agree = f"{100 * m['agreement']:.1f}%" if "agreement" in m else "–"
        latency = f"{m['latency_b1_p50_ms']:.2f}" if "latency_b1_p50_ms" in m else "–"
        lines.append(f"| {name} | {100 * m['accuracy']:.2f}% | {agree} | {m.get('params', 0):,} | "
                     f"{m.get('size_mb', 0):.2f} | {latency} |")
    return lines + [""]


def _usage(fmt: str, inputs: list[str], custom_code: bool = True) -> list[str]:
    if fmt == "hf" and not custom_code:
        return ["```python", "from transformers import pipeline",
                "classify = pipeline(\"text-classification\", model=\"PATH\")",
                "classify(\"some text\", truncation=True)", "```",
                "A stock transformers model: no custom code."]
    if fmt == "hf":
        return ["```python", "from transformers import AutoTokenizer, pipeline",
                "classify = pipeline(\"text-classification\", model=\"PATH\", trust_remote_code=True)",
                "classify(\"some text\", truncation=True)",
                "tokenizer = AutoTokenizer.from_pretrained(\"PATH\", trust_remote_code=False)  # needs no code",
                "```",
                "`trust_remote_code=True` loads `modeling_distill.py` (in this folder): the encoder with "
                "mean pooling and the trained head. A student built with `pooling: pooler` exports as a stock "
                "transformers model instead."]
    if fmt == "onnx":  # the file's own input names
        feed = "{" + ", ".join(f'"{name}": {name}' for name in inputs) + "}"
        return ["```python", "import onnxruntime", "session = onnxruntime.InferenceSession(\"PATH\")",
                f"logits = session.run([\"logits\"], {feed})[0]", "```"]
    return ["The weights are a safetensors file; rebuild the model from the run's config and load them "
            "with `distill.core.checkpoint.load_weights`."]
