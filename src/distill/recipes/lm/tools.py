"""`distill export MODEL_DIR --format gguf`: a causal-LM student as GGUF files, each checked by
llama.cpp against the PyTorch student (and its teacher) on held-out text when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError
from distill.core.rundir import require_finished_run


def export_lm_gguf(model_dir: Path | str, out: Path, qtype: str, *, check_text: Path | None = None,
                   teacher: str | None = None, block: int = 128, max_texts: int = 64) -> dict[str, Any]:
    """Write `model_dir` as GGUF `out` (+ Modelfile); with `check_text` (a text file, one held-out
    text per paragraph), the llama.cpp check's figures against the student and the `teacher`."""
    from distill.export.gguf import export_gguf

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model directory (no config.json); give the "
                          "student's model folder, e.g. runs/lm_kjv/distilled/model.")
    require_finished_run(model_dir, "the model directory")  # RUN/<stage>/model
    texts = _held_out(check_text, max_texts) if check_text is not None else None  # read before writing
    result = export_gguf(model_dir, out, qtype)
    if texts is not None:
        from distill.export.gguf_check import gguf_agreement
        from distill.models.causal_lm import load_causal_lm, load_tokenizer

        student = load_causal_lm(str(model_dir)).eval()
        reference = load_causal_lm(teacher).eval() if teacher else None
        result["check"] = gguf_agreement(out, student, load_tokenizer(str(model_dir)), texts, block=block,
                                         teacher=reference)
    result["card"] = str(_write_card(model_dir, out, result))
    return result


def _write_card(model_dir: Path, out: Path, result: dict[str, Any]) -> Path:
    """`<file>.README.md`: the student's own card (when it has one), then this file's type, size, check and use."""
    from distill.core.files import atomic_write_text

    student = model_dir / "README.md"
    lines = [student.read_text(encoding="utf-8").rstrip(), ""] if student.is_file() else [
        "---", "tags: [distillation, distill, gguf]", "---", "", f"# {model_dir.name}", ""]
    lines += [f"## This file: GGUF {result['type']}, {result['size_mb']:.1f} MB", ""]
    check = result.get("check")
    if check:
        lines += [f"Run by llama.cpp on {int(check['positions'])} held-out positions, it picks the PyTorch student's "
                  f"next token {check['top1_agreement']:.2%} of the time"
                  + (f" and the teacher's {check['teacher_top1_agreement']:.2%} (the PyTorch student: "
                     f"{check['torch_teacher_top1_agreement']:.2%})" if "teacher_top1_agreement" in check else "")
                  + f"; {check['tokenization_match']:.0%} of the texts tokenize identically.", ""]
    lines += ["```bash", f"ollama create {model_dir.parent.name or 'student'} -f {Path(result['modelfile']).name}",
              f"llama-server -m {out.name}      # llama.cpp's OpenAI-compatible server", "```"]
    path = Path(f"{out}.README.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _held_out(path: Path, max_texts: int) -> list[str]:
    """Paragraphs of a text file (blank-line separated), at most `max_texts`."""
    if not path.is_file():
        raise ConfigError(f"--check {path}: no such file; give a text file of held-out text.")
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if not paragraphs:
        raise ConfigError(f"--check {path}: the file has no text.")
    return paragraphs[:max_texts]


def describe_gguf(result: dict[str, Any]) -> str:
    """One line on what `export_lm_gguf` wrote and, when checked, what llama.cpp measured."""
    text = f"Wrote {result['path']} ({result['size_mb']:.1f} MB) and {result['modelfile']}"
    check = result.get("check")
    if check:
        text += (f"; llama.cpp on {int(check['positions'])} held-out positions picks the student's next token "
                 f"{check['top1_agreement']:.2%} of the time")
        if "teacher_top1_agreement" in check:
            text += f", the teacher's {check['teacher_top1_agreement']:.2%}"
        text += f"; {check['tokenization_match']:.0%} of texts tokenize identically"
    return text
