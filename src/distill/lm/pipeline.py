"""The `distill lm` job: teacher → data → teacher signal → CE baseline and distilled students →
held-out evaluation → report, each stage resumable.

Run directory:
  config.yaml, report.json, report.md
  teacher_cache/train, teacher_cache/val   top-k caches (unless teacher.cache_dir says elsewhere)
  baseline/, distilled/                    last.safetensors (resume), metrics.jsonl, model/ (HF format)
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.bench import time_calls
from distill.errors import ModelError
from distill.files import atomic_write_text
from distill.lm import models as lm_models
from distill.lm.config import LMRunConfig
from distill.lm.evaluate import evaluate_lm
from distill.lm.signals import LiveLMTeacher, TokenTeacher, TopKCache
from distill.lm.text import TextSplits, blocks_subset, encode_rows, pack_text, read_jsonl, read_kjv, split_blocks
from distill.lm.train import fit_lm
from distill.pipeline import machine_description, open_run_dir
from distill.training import process_state


def run_lm(cfg: LMRunConfig, resume: bool = False) -> Path:
    """Run the whole LM job; returns the run directory (which holds report.md)."""
    require_transformers()
    run_dir = open_run_dir(cfg, resume)  # type: ignore[arg-type]  (uses name, output_dir, device only)
    tokenizer = lm_models.load_tokenizer(cfg.teacher.model, "teacher.model")
    licence = lm_models.licence_of(cfg.teacher.model)
    lm_models.warn_licence(licence)
    teacher = lm_models.load_causal_lm(cfg.teacher.model, "teacher.model").to(process_state(cfg.device).device)
    if process_state(cfg.device).is_main_process:
        manifest = {"teacher": cfg.teacher.model, "licence": licence,
                    "licence_warning": lm_models.licence_warning(licence),
                    "tokenizer": lm_models.tokenizer_fingerprint(tokenizer),
                    "teacher_params": lm_models.count_parameters(teacher)}
        atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2))
    data = load_text(cfg, tokenizer)
    students: dict[str, nn.Module] = {}
    template = build_student(cfg, teacher, tokenizer)  # built (and checked) once; each stage trains a copy
    vocab = lm_models.shared_vocab(tokenizer, teacher, template)
    signal, val_signal = teacher_signals(cfg, teacher, data, tokenizer, vocab, run_dir)
    stages = (["baseline"] if cfg.baseline else []) + ["distilled"]
    for stage in stages:
        students[stage] = train_stage(cfg, stage, template, tokenizer, data, vocab,
                                      signal if stage == "distilled" else None, val_signal, run_dir, resume)
    if process_state(cfg.device).is_main_process:
        report = evaluate_lm_run(cfg, teacher, students, data, vocab, val_signal, licence)
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
        atomic_write_text(run_dir / "report.md", render_lm_report(report))
    return run_dir


def build_caches(cfg: LMRunConfig) -> dict[str, TopKCache]:
    """Just the teacher caches of `cfg` (train and val), built or verified."""
    require_transformers()
    tokenizer = lm_models.load_tokenizer(cfg.teacher.model, "teacher.model")
    teacher = lm_models.load_causal_lm(cfg.teacher.model, "teacher.model")
    data = load_text(cfg, tokenizer)
    vocab = lm_models.shared_vocab(tokenizer, teacher)
    root = cfg.teacher.cache_dir or Path(cfg.output_dir) / cfg.name / "teacher_cache"
    return {split: _cache(cfg, teacher, getattr(data, split), tokenizer, vocab, Path(root) / split)
            for split in ("train", "val")}


def _cache(cfg: LMRunConfig, teacher: nn.Module, blocks: Any, tokenizer: Any, vocab: int,
           directory: Path) -> TopKCache:
    identity = {"teacher": cfg.teacher.model, "tokenizer": lm_models.tokenizer_fingerprint(tokenizer),
                "k": cfg.teacher.top_k, "vocab": vocab}
    return TopKCache.build_or_open(teacher, blocks, directory, identity=identity, batch_size=cfg.teacher.batch_size,
                                   rebuild=cfg.teacher.cache_rebuild, quiet=cfg.quiet,
                                   device=process_state(cfg.device).device)


def load_text(cfg: LMRunConfig, tokenizer: Any) -> TextSplits:
    d = cfg.data
    if d.corpus == "jsonl":
        rows = read_jsonl(d.path)  # type: ignore[arg-type]
        blocks = encode_rows(rows, tokenizer, d.seq_len, response_only=d.response_only, packing=d.packing,
                             source=str(d.path))
        if d.max_blocks:
            blocks = blocks_subset(blocks, torch.arange(min(len(blocks), d.max_blocks)))
    else:
        texts = read_kjv(d.path) if d.corpus == "kjv" else [Path(d.path).read_text()]  # type: ignore[arg-type]
        blocks = pack_text(texts, tokenizer, d.seq_len, d.max_blocks)
    splits = split_blocks(blocks, d.val_fraction, d.seed)
    if d.val_blocks is not None and len(splits.val) > d.val_blocks:
        splits.val = blocks_subset(splits.val, torch.arange(d.val_blocks))
    return splits


def build_student(cfg: LMRunConfig, teacher: nn.Module, tokenizer: Any) -> nn.Module:
    s = cfg.student
    if s.model is not None:
        student = lm_models.load_causal_lm(s.model, "student.model")
        lm_models.check_same_tokenizer(tokenizer, lm_models.load_tokenizer(s.model, "student.model"),
                                       cfg.teacher.model, s.model)
    else:
        student = lm_models.student_from_teacher(teacher, layers=s.layers, overrides=s.config, seed=cfg.train.seed)
    if s.lora is not None:
        student = lm_models.add_lora(student, s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.target_modules)
    return student


def teacher_signals(cfg: LMRunConfig, teacher: nn.Module, data: TextSplits, tokenizer: Any, vocab: int,
                    run_dir: Path) -> tuple[TokenTeacher, TokenTeacher]:
    """Training signal (live, or the top-k cache) and the validation signal (cached the same way)."""
    live = LiveLMTeacher(teacher, vocab)
    if cfg.teacher.signal == "live" and cfg.on_policy.fraction > 0:
        return live, live
    root = Path(cfg.teacher.cache_dir or run_dir / "teacher_cache")
    caches = {}
    with process_state(cfg.device).main_process_first():  # one process builds, the others open it
        for split in ("train", "val"):
            if split == "val" or cfg.teacher.signal == "cached":
                caches[split] = _cache(cfg, teacher, getattr(data, split), tokenizer, vocab, root / split)
    return caches.get("train", live), caches["val"]


def train_stage(cfg: LMRunConfig, stage: str, template: nn.Module, tokenizer: Any, data: TextSplits, vocab: int,
                signal: TokenTeacher | None, val_signal: TokenTeacher, run_dir: Path, resume: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    done = run_dir / stage / "model"
    if (done / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(done, use_safetensors=True).eval()
    student = copy.deepcopy(template)  # same initial weights for the baseline and the distilled student
    out = fit_lm(student, data.train, train=cfg.train, loss=cfg.loss, vocab=vocab, teacher=signal,
                 on_policy=cfg.on_policy if signal is not None else None, val_data=data.val,
                 val_teacher=val_signal, pad_id=tokenizer.pad_token_id, checkpoint_dir=run_dir / stage,
                 resume=resume, device=cfg.device, quiet=cfg.quiet, name=stage)
    model = out.model.merge_and_unload() if hasattr(out.model, "merge_and_unload") else out.model
    if process_state(cfg.device).is_main_process:
        save_pretrained_atomic(model, tokenizer, done)
    process_state(cfg.device).wait_for_everyone()
    return model.eval()


def save_pretrained_atomic(model: nn.Module, tokenizer: Any, target: Path) -> None:
    """Hugging Face layout (loadable by plain transformers), written to a temp dir then renamed."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate_lm_run(cfg: LMRunConfig, teacher: nn.Module, students: dict[str, nn.Module], data: TextSplits,
                    vocab: int, val_signal: TokenTeacher, licence: str | None) -> dict[str, Any]:
    models: dict[str, Any] = {"teacher": {**evaluate_lm(teacher, data.val, vocab), **_costs(teacher, data)}}
    for name, model in students.items():
        models[name] = {**evaluate_lm(model, data.val, vocab, teacher=val_signal), **_costs(model, data)}
    t, s = models["teacher"], models["distilled"]
    summary = {"params_ratio": s["params"] / t["params"], "speedup": t["forward_ms"] / s["forward_ms"],
               "ppl_ratio": s["ppl"] / t["ppl"]}
    if "baseline" in models:
        summary["ppl_gain_vs_baseline"] = models["baseline"]["ppl"] / s["ppl"]
    return {
        "name": cfg.name, "kind": "lm",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(torch.get_num_threads()),
        "teacher": {"model": cfg.teacher.model, "licence": licence,
                    "licence_warning": lm_models.licence_warning(licence)},
        "data": {"corpus": cfg.data.corpus, "seq_len": data.train.seq_len, "train_blocks": len(data.train),
                 "val_blocks": len(data.val), "train_tokens": data.train.num_tokens,
                 "tokens_seen": cfg.train.steps * cfg.train.batch_size * data.train.seq_len},
        "loss": cfg.loss.model_dump(mode="json"),
        "teacher_signal": cfg.teacher.signal, "top_k": cfg.teacher.top_k,
        "kl_over": "full vocabulary" if isinstance(val_signal, LiveLMTeacher) else f"top-{cfg.teacher.top_k} + tail",
        "models": models, "summary": summary,
    }


def _costs(model: nn.Module, data: TextSplits) -> dict[str, float]:
    """Parameters and the median forward time of one block at batch 1, on this process's device."""
    x = data.val.input_ids[:1].to(next(model.parameters()).device)
    times = time_calls(model.eval(), x, repeats=5, warmup=1)
    return {"params": lm_models.count_parameters(model), "forward_ms": 1000 * sorted(times)[len(times) // 2]}


def render_lm_report(report: dict[str, Any]) -> str:
    """Markdown for a person: what was distilled, how close the student is, at what cost."""
    t = report["teacher"]
    lines = [f"# LM distillation report: {report['name']}", "",
             f"{report['date']} · {report['machine']}", "",
             f"Teacher `{t['model']}`, licence **{t['licence'] or 'unknown'}**."]
    if t["licence_warning"]:
        lines += ["", f"> ⚠ Licence: {t['licence_warning']}."]
    d, loss = report["data"], report["loss"]
    lines += ["", f"Data: {d['corpus']}, {d['train_blocks']} training blocks of {d['seq_len']} tokens "
              f"({d['tokens_seen']:,} tokens seen per student), {d['val_blocks']} held-out blocks.",
              f"Loss: {loss['ratio']:g} × {loss['kind']} (T={loss['temperature']:g}) + "
              f"{1 - loss['ratio']:g} × CE; teacher signal: {report['teacher_signal']}"
              + (f" (top-{report['top_k']})" if report["teacher_signal"] == "cached" else "") + ".", "",
              "| model | params | held-out ppl | KL to teacher | top-1 agreement | forward ms (1 block) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        kl = f"{m['kl_teacher']:.3f}" if "kl_teacher" in m else "–"
        agree = f"{100 * m['agreement']:.1f}%" if "agreement" in m else "–"
        lines.append(f"| {name} | {m['params'] / 1e6:.1f}M | {m['ppl']:.2f} | {kl} | {agree} | {m['forward_ms']:.1f} |")
    s = report["summary"]
    lines += ["", f"The distilled student has {s['params_ratio']:.2f}× the teacher's parameters and runs "
              f"{s['speedup']:.1f}× faster; its perplexity is {s['ppl_ratio']:.2f}× the teacher's."]
    if "ppl_gain_vs_baseline" in s:
        lines.append(f"Against the same student trained with plain CE, distillation divides perplexity by "
                     f"{s['ppl_gain_vs_baseline']:.2f}.")
    if report["kl_over"] != "full vocabulary":
        lines += ["", f"KL to the teacher is measured over the teacher's cached {report['kl_over']} bin "
                  "(a lower bound of the full-vocabulary KL)."]
    return "\n".join(lines) + "\n"


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError("LM distillation needs transformers: pip install 'distill[lm]'") from None
