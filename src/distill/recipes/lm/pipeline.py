"""The `distill lm` job: teacher → data → teacher signal → CE baseline and distilled students →
held-out evaluation → report, each stage resumable.

Run directory:
  config.yaml, report.json, report.md
  teacher_cache/train, teacher_cache/val   top-k caches (unless teacher.cache_dir says elsewhere)
  teacher_cache/adapted-<id>/              with teacher.adapt: the fine-tuned teacher (model/, metrics.jsonl)
                                           and its own train/val caches; <id> names the settings and corpus
  baseline/, distilled/                    last.safetensors (resume), metrics.jsonl, model/ (HF format)

Its parts: the corpus (`data`), the teacher signals (`signals`), a student with another tokenizer
(`cross`), the report and cards (`report`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.checkpoint import drop_training_state
from distill.core.distributed import process_state
from distill.core.errors import ModelError
from distill.core.files import atomic_write_text
from distill.core.rundir import open_run_dir
from distill.core.threads import choose_threads
from distill.training.tracking import check_report_to
from distill.data.alignment import vocab_map
from distill.data.tokens import TextSplits, TokenBlocks
from distill.eval.bench import interleaved_ms, machine_description, timing_notes
from distill.eval.doctor import diagnose_lm
from distill.eval.lm import block_bytes, evaluate_lm, evaluate_logprobs
from distill.eval.verdict import MIN_DOCUMENTS, compare_bits
from distill.losses.config import TokenKDConfig
from distill.models import causal_lm as lm_models
from distill.recipes.lm import cross
from distill.recipes.lm.config import LMRunConfig
from distill.recipes.lm.data import documents_of, load_text
from distill.recipes.lm.report import render_lm
from distill.recipes.lm.signals import load_others, served_logprobs, teacher_cache, teacher_signals
from distill.teachers.cross import CrossLiveTeacher, CrossLMTeacher
from distill.teachers.output import Teacher
from distill.teachers.tokens import LiveLMTeacher, TopKCache
from distill.training.config import LMTrainConfig
from distill.training.lm import fit_lm, tokens_seen


def run_lm(cfg: LMRunConfig, resume: bool = False) -> Path:
    """Run the whole LM job; returns the run directory (which holds report.md)."""
    require_transformers()
    choose_threads()
    check_report_to(cfg.report_to)
    tokenizer = lm_models.load_tokenizer(cfg.teacher.model, "teacher.model")
    licence = lm_models.licence_of(cfg.teacher.model)
    lm_models.warn_licence(licence)
    teacher = teacher_model(cfg)
    student_tok = cross.student_tokenizer(cfg, tokenizer)
    if student_tok is not None:  # another tokenizer: taught at aligned positions
        return run_cross_lm(cfg, teacher, tokenizer, student_tok, licence, resume)
    data = load_text(cfg, tokenizer)
    template = build_student(cfg, teacher, tokenizer)  # built (and checked) once; each stage trains a copy
    vocab = lm_models.shared_vocab(tokenizer, teacher, template)
    others = load_others(cfg, tokenizer)
    run_dir = open_run_dir(cfg, resume)  # written only once the models and data are known to work
    write_manifest(cfg, run_dir, tokenizer, teacher, licence)
    root = teacher_root(cfg, data, run_dir)
    adapted = adapt_teacher(cfg, teacher, tokenizer, data, vocab, root, resume)
    signal, val_signal = teacher_signals(cfg, adapted, data, tokenizer, vocab, root, others,
                                         others_root=cache_root(cfg, run_dir) / "others")
    students = train_students(cfg, template, tokenizer, data, vocab, signal, val_signal, run_dir, resume,
                              teacher, adapted)
    students.update({f"teacher_{name}": model for name, model in others.items() if model is not None})
    if process_state(cfg.device).is_main_process:
        report = evaluate_lm_run(cfg, teacher, students, data, vocab, val_signal, licence,
                                 val_bytes=block_bytes(data.val, tokenizer), root=root)
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
        render_lm(run_dir)
    return run_dir


def run_cross_lm(cfg: LMRunConfig, teacher: nn.Module, tokenizer: Any, student_tok: Any, licence: str | None,
                 resume: bool) -> Path:
    """The job for a student with another tokenizer (`distill.recipes.lm.cross`)."""
    documents = cross.texts(documents_of(cfg), str(cfg.data.path))
    data, student_data = cross.cross_splits(cfg, tokenizer, student_tok, documents)
    template = cross.cross_student(cfg, teacher, student_tok)
    vocab, student_vocab = lm_models.shared_vocab(tokenizer, teacher), lm_models.shared_vocab(student_tok, template)
    run_dir = open_run_dir(cfg, resume)
    write_manifest(cfg, run_dir, tokenizer, teacher, licence, student_tok)
    root = teacher_root(cfg, data, run_dir)
    adapted = adapt_teacher(cfg, teacher, tokenizer, data, vocab, root, resume)
    to_student = vocab_map(tokenizer, student_tok)
    if cfg.teacher.signal == "live":  # the teacher reads the student's text on every batch (on-policy rounds too)
        signal: Teacher = CrossLiveTeacher(adapted, tokenizer, student_tok, to_student, k=cfg.teacher.top_k,
                                           vocab=vocab, teacher_len=data.train.seq_len)
    else:
        with process_state(cfg.device).main_process_first():
            cache = teacher_cache(cfg, adapted, data.train, tokenizer, vocab, root / "train")
        signal = CrossLMTeacher(cache, to_student)
    students = train_students(cfg, template, student_tok, student_data, student_vocab, signal, None, run_dir,
                              resume, teacher, adapted)
    if process_state(cfg.device).is_main_process:
        report = evaluate_lm_run(cfg, teacher, students, data, vocab, None, licence,
                                 val_bytes=block_bytes(data.val, tokenizer), root=root, student_data=student_data,
                                 student_vocab=student_vocab, student_bytes=block_bytes(student_data.val, student_tok))
        report["cross_tokenizer"] = {"method": cfg.kd.cross, "aligned_share": student_data.train.aligned_share,
                                     "student_tokenizer": cfg.student.tokenizer or cfg.student.model}
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
        render_lm(run_dir)
    return run_dir


def write_manifest(cfg: LMRunConfig, run_dir: Path, tokenizer: Any, teacher: nn.Module, licence: str | None,
                   student_tok: Any = None) -> None:
    """manifest.json: the teachers, their licences (each warned about once) and tokenizers."""
    if not process_state(cfg.device).is_main_process:
        return
    manifest: dict[str, Any] = {"teacher": cfg.teacher.model, "licence": licence,
                                "licence_warning": lm_models.licence_warning(licence),
                                "tokenizer": lm_models.tokenizer_fingerprint(tokenizer),
                                "teacher_params": lm_models.count_parameters(teacher)}
    if cfg.teacher.others:
        manifest["other_teachers"] = {}
        for o in cfg.teacher.others:
            theirs = lm_models.licence_of(o.model)
            lm_models.warn_licence(theirs)
            manifest["other_teachers"][o.name] = {"model": o.model, "licence": theirs,
                                                  "licence_warning": lm_models.licence_warning(theirs)}
    if student_tok is not None:
        source = cfg.student.tokenizer or cfg.student.model
        manifest["student_tokenizer"] = {"source": source, "fingerprint": lm_models.tokenizer_fingerprint(student_tok),
                                         "size": len(student_tok), "licence": lm_models.tokenizer_licence(source)}
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2))


def train_students(cfg: LMRunConfig, template: nn.Module, tokenizer: Any, data: TextSplits, vocab: int,
                   signal: Teacher, val_signal: Teacher | None, run_dir: Path, resume: bool, teacher: nn.Module,
                   adapted: nn.Module) -> dict[str, nn.Module]:
    """The CE baseline (when asked) and the distilled student, after the adapted teacher when there is one."""
    students: dict[str, nn.Module] = {} if adapted is teacher else {"teacher_adapted": adapted}
    for stage in (["baseline"] if cfg.baseline else []) + ["distilled"]:
        students[stage] = train_stage(cfg, stage, template, tokenizer, data, vocab,
                                      signal if stage == "distilled" else None, val_signal, run_dir, resume)
    return students


def build_caches(cfg: LMRunConfig) -> dict[str, TopKCache]:
    """Just the teacher caches of `cfg` (train and val; with `teacher.others`, theirs too), built or
    verified; through an endpoint without loading that teacher here."""
    require_transformers()
    tokenizer = lm_models.load_tokenizer(cfg.teacher.model, "teacher.model")
    student_tok = cross.student_tokenizer(cfg, tokenizer)  # another tokenizer: the teacher's side of its chunks
    data = load_text(cfg, tokenizer) if student_tok is None else \
        cross.cross_splits(cfg, tokenizer, student_tok, cross.texts(documents_of(cfg), str(cfg.data.path)))[0]
    vocab, others = len(tokenizer), load_others(cfg, tokenizer)
    teacher = None
    if cfg.teacher.endpoint is None:
        teacher = lm_models.load_causal_lm(cfg.teacher.model, "teacher.model")
        vocab = lm_models.shared_vocab(tokenizer, teacher)
    run_dir = Path(cfg.output_dir) / cfg.name
    root = teacher_root(cfg, data, run_dir)
    if teacher is not None:
        teacher = adapt_teacher(cfg, teacher, tokenizer, data, vocab, root, resume=True)
    caches = {split: teacher_cache(cfg, teacher, getattr(data, split), tokenizer, vocab, root / split)
              for split in ("train", "val") if split == "train" or student_tok is None}  # cross runs use no val cache
    if cfg.teacher.endpoint is not None:  # the served teacher's own held-out scores, for the run's report
        served_logprobs(cfg, data.val, root / "val", vocab)
    for o in cfg.teacher.others:
        where = cache_root(cfg, run_dir) / "others" / o.name
        caches.update({f"{o.name}/{split}": teacher_cache(cfg, others[o.name], getattr(data, split), tokenizer, vocab,
                                                          where / split, model=o.model, endpoint=o.endpoint,
                                                          adapted=False) for split in ("train", "val")})
    return caches


def cache_root(cfg: LMRunConfig, run_dir: Path) -> Path:
    """`teacher.cache_dir`, or the run's teacher_cache/."""
    return Path(cfg.teacher.cache_dir or run_dir / "teacher_cache")


def teacher_root(cfg: LMRunConfig, data: TextSplits, run_dir: Path) -> Path:
    """Where the teacher's products live: the caches, and with `teacher.adapt` the adapted teacher, in a
    folder named after the adaptation settings and the training corpus (so runs sharing `teacher.cache_dir`
    share one adapted teacher, and other settings never read its caches)."""
    root = cache_root(cfg, run_dir)
    return root / f"adapted-{_adapt_id(cfg, data)}" if cfg.teacher.adapt is not None else root


def _taught_by(cfg: LMRunConfig, models: dict[str, Any]) -> str:
    """The report row of the teacher the summary compares the student with: the adapted teacher, or with
    several teachers the heaviest (the first of equals), else the teacher."""
    if "teacher_adapted" in models:
        return "teacher_adapted"
    weights = cfg.teacher.weights
    heaviest = max(weights, key=lambda n: weights[n])  # dicts keep order: ties go to the first
    return "teacher" if heaviest == cfg.teacher.name else f"teacher_{heaviest}"


def _adapt_id(cfg: LMRunConfig, data: TextSplits) -> str:
    a = cfg.teacher.adapt
    parts = [cfg.teacher.model, a.model_dump(mode="json") if a else None, cfg.train.batch_size, cfg.train.precision,
             cfg.train.optimizer.model_dump(mode="json", exclude={"lr"}), data.train.fingerprint()]  # what it trains with
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def adapt_teacher(cfg: LMRunConfig, teacher: nn.Module, tokenizer: Any, data: TextSplits, vocab: int,
                  root: Path, resume: bool) -> nn.Module:
    """The teacher fine-tuned on the training blocks with next-token CE (`teacher.adapt`), trained once
    into `root`/model and read back from there; the teacher as given when `teacher.adapt` is unset.
    Its resumable state (weights and optimizer: 12 bytes a parameter) is saved every quarter of the
    steps but not more often than every 10: a save costs more than a few steps of a short adaptation."""
    a = cfg.teacher.adapt
    if a is None:
        return teacher
    model = copy.deepcopy(teacher).requires_grad_(True)  # a teacher may arrive frozen
    if a.lora is not None:
        model = lm_models.add_lora(model, a.lora.r, a.lora.alpha, a.lora.dropout, a.lora.target_modules)
    train = LMTrainConfig(steps=a.steps, batch_size=cfg.train.batch_size, warmup_steps=min(10, a.steps // 10),
                          eval_every=a.steps, save_every=max(10, a.steps // 4), precision=cfg.train.precision,
                          seed=a.seed, optimizer=cfg.train.optimizer.model_copy(update={"lr": a.lr}))
    loss = TokenKDConfig(ratio=0.0, chunk_tokens=cfg.kd.chunk_tokens)
    adapted = _fit_and_save(cfg, model, tokenizer, data, vocab, train, loss, None, None, root, "adapt teacher",
                            resume=True)  # its own folder, keyed by its settings: always safe to continue
    (root / "last.safetensors").unlink(missing_ok=True)  # the teacher's training state is not needed again
    return adapted.to(next(teacher.parameters()).device).requires_grad_(False)


def teacher_model(cfg: LMRunConfig) -> nn.Module:
    """The teacher on this process's device; with `teacher.endpoint`, its skeleton (config and shapes,
    no weights): the served teacher never enters this process's memory."""
    if cfg.teacher.endpoint is not None:
        return lm_models.skeleton(cfg.teacher.model, "teacher.model")
    return lm_models.load_causal_lm(cfg.teacher.model, "teacher.model").to(process_state(cfg.device).device)


def build_student(cfg: LMRunConfig, teacher: nn.Module, tokenizer: Any) -> nn.Module:
    s = cfg.student
    if s.layers is not None and lm_models.is_skeleton(teacher):  # a served teacher: its weights, for the copy only
        teacher = lm_models.load_causal_lm(cfg.teacher.model, "teacher.model")
    if s.model is not None:
        student = lm_models.load_causal_lm(s.model, "student.model")
        lm_models.check_same_tokenizer(tokenizer, lm_models.load_tokenizer(s.model, "student.model"),
                                       cfg.teacher.model, s.model)
    else:
        student = lm_models.student_from_teacher(teacher, layers=s.layers, overrides=s.config, seed=cfg.train.seed)
    if s.lora is not None:
        student = lm_models.add_lora(student, s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.target_modules)
    return student


def train_stage(cfg: LMRunConfig, stage: str, template: nn.Module, tokenizer: Any, data: TextSplits, vocab: int,
                signal: Teacher | None, val_signal: Teacher, run_dir: Path, resume: bool) -> nn.Module:
    student = copy.deepcopy(template)  # same initial weights for the baseline and the distilled student
    return _fit_and_save(cfg, student, tokenizer, data, vocab, cfg.train, cfg.kd, signal, val_signal,
                         run_dir / stage, stage, resume)


def _fit_and_save(cfg: LMRunConfig, model: nn.Module, tokenizer: Any, data: TextSplits, vocab: int,
                  train: LMTrainConfig, kd: TokenKDConfig, signal: Teacher | None,
                  val_signal: Teacher | None, stage_dir: Path, name: str, resume: bool) -> nn.Module:
    """One training stage into `stage_dir` (resumable); its model/ (Hugging Face format) once finished."""
    from transformers import AutoModelForCausalLM

    done = stage_dir / "model"
    if (done / "config.json").is_file():
        if process_state(cfg.device).is_main_process:
            drop_training_state(stage_dir, keep=cfg.keep_state)  # a run killed right after the model was written
        return AutoModelForCausalLM.from_pretrained(done, use_safetensors=True).eval()
    out = fit_lm(model, data.train, train=train, kd=kd, vocab=vocab, teacher=signal,
                 on_policy=cfg.on_policy if signal is not None else None, val_data=data.val,
                 val_teacher=val_signal, pad_id=tokenizer.pad_token_id, checkpoint_dir=stage_dir,
                 resume=resume, device=cfg.device, quiet=cfg.quiet, name=name, tracking=cfg.report_to,
                 project=cfg.name)
    model = out.model.merge_and_unload() if hasattr(out.model, "merge_and_unload") else out.model
    if process_state(cfg.device).is_main_process:
        lm_models.save_pretrained_atomic(model, tokenizer, done)
        drop_training_state(stage_dir, keep=cfg.keep_state)
    process_state(cfg.device).wait_for_everyone()
    return model.eval()


def evaluate_lm_run(cfg: LMRunConfig, teacher: nn.Module, students: dict[str, nn.Module], data: TextSplits,
                    vocab: int, val_signal: Teacher | None, licence: str | None, val_bytes: torch.Tensor | None = None,
                    *, root: Path | None = None, student_data: TextSplits | None = None, student_vocab: int | None = None,
                    student_bytes: torch.Tensor | None = None) -> dict[str, Any]:
    """The report: every model on the held-out blocks (`val_bytes`: the bytes each block's targets
    spell, for bits per byte). A student with another tokenizer (`student_data`, `student_vocab`,
    `student_bytes`) is scored on its own blocks of the same text: bits per byte compare it with the
    teacher, and there is no KL or agreement across vocabularies. The verdict is a paired bootstrap
    over held-out documents of the distilled and CE students' bits per byte."""
    shown = None if cfg.quiet else "evaluate {}"
    text_bytes = int(val_bytes.sum()) if val_bytes is not None else None
    models: dict[str, Any] = {"teacher": _teacher_row(cfg, teacher, data, vocab, text_bytes, shown, root)}
    own = student_data or data
    sums: dict[str, list[float]] = {}
    for name, model in students.items():
        theirs = name == "teacher_adapted" or student_data is None
        scored_against = None if name.startswith("teacher_") and name != "teacher_adapted" else val_signal
        sums[name] = []
        models[name] = {**evaluate_lm(model, (data if theirs else own).val, vocab if theirs else student_vocab,
                                      teacher=scored_against if theirs else None,
                                      text_bytes=text_bytes if theirs else int(student_bytes.sum()),  # type: ignore[union-attr]
                                      progress=shown and shown.format(name), block_ce=sums[name]),
                        "params": lm_models.count_parameters(model)}
    local = {} if "served" in models["teacher"] else {"teacher": teacher}  # a served teacher is not timed here
    timed = interleaved_ms({k: (m, _one_block(m, data if k.startswith("teacher") else own))
                            for k, m in {**local, **students}.items()})
    for k, t in timed.items():
        models[k].update(t)
    taught_by = _taught_by(cfg, models)
    t, s = models[taught_by], models["distilled"]
    summary = {"teacher": taught_by, "params_ratio": s["params"] / t["params"], "ppl_ratio": s["ppl"] / t["ppl"]}
    if "forward_ms" in t:  # not for a teacher served elsewhere
        summary["speedup"] = t["forward_ms"] / s["forward_ms"]
    if "bpb" in s and "bpb" in t:
        summary["bpb_ratio"] = s["bpb"] / t["bpb"]
    if "baseline" in models:
        summary["ppl_gain_vs_baseline"] = models["baseline"]["ppl"] / s["ppl"]
    report = {
        "name": cfg.name, "kind": "lm",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(torch.get_num_threads()),
        "threads": choose_threads(),
        "teacher": {"model": cfg.teacher.model, "licence": licence,
                    "licence_warning": lm_models.licence_warning(licence)},
        "data": {"corpus": cfg.data.corpus, "seq_len": data.train.seq_len, "train_blocks": len(data.train),
                 "val_blocks": len(data.val), "train_tokens": data.train.num_tokens,
                 "tokens_seen": tokens_seen(data.train, cfg.train, process_state(cfg.device).num_processes),
                 "steps": cfg.train.steps, "holdout": data.holdout,
                 "train_documents": data.train.documents, "val_documents": data.val.documents},
        "kd": cfg.kd.model_dump(mode="json"),
        "teacher_adapt": cfg.teacher.adapt.model_dump(mode="json") if cfg.teacher.adapt else None,
        "teacher_signal": cfg.teacher.signal, "top_k": cfg.teacher.top_k,
        "kl_over": "full vocabulary" if isinstance(val_signal, LiveLMTeacher) else f"top-{cfg.teacher.top_k} + tail",
        "models": models, "summary": summary, "timing_notes": timing_notes(models),
        "verdict": (lm_verdict(sums["baseline"], sums["distilled"], own.val,
                               student_bytes if student_data is not None else val_bytes)
                    if "baseline" in sums else None),
    }
    if cfg.teacher.others:
        t = cfg.teacher
        report["teachers"] = {"weights": t.weights, "weighting": t.weighting, "route": t.route,
                              "models": {t.name: t.model, **{o.name: o.model for o in t.others}}}
    report["doctor"] = diagnose_lm(report)
    return report


def lm_verdict(ce_a: list[float], ce_b: list[float], val: TokenBlocks, nbytes: torch.Tensor | None) -> dict[str, Any]:
    """B (distilled) against A (CE student): a paired bootstrap over held-out documents of bits per byte
    (bits per token without byte counts); over blocks where documents are not recorded or too few to
    resample (a single held-out text)."""
    by_document = val.document is not None and int(val.document.unique().numel()) >= MIN_DOCUMENTS
    doc = val.document if by_document else torch.arange(len(val))
    units, group = torch.unique(doc, return_inverse=True)
    per_doc = lambda v: torch.zeros(len(units), dtype=torch.float64).index_add_(0, group, v)  # noqa: E731
    bits_a, bits_b = (per_doc(torch.tensor(c, dtype=torch.float64) / math.log(2)) for c in (ce_a, ce_b))
    denominator = nbytes if nbytes is not None else val.loss_mask.sum(1).double()
    v = compare_bits(bits_a, bits_b, per_doc(denominator.double()))
    unit = "bits per byte" if nbytes is not None else "bits per token"
    return {**v.to_dict(), "unit": unit, "units": "documents" if by_document else "blocks",
            "sentence": v.sentence("the distilled student", "the CE student").replace("bits per byte", unit)}


def _teacher_row(cfg: LMRunConfig, teacher: nn.Module, data: TextSplits, vocab: int, text_bytes: int | None,
                 shown: str | None, root: Path | None) -> dict[str, Any]:
    """The teacher on the held-out blocks: here, or through `teacher.endpoint` (its prompt log-probs,
    kept in `root`/val; no forward time, which would be the server's)."""
    e = cfg.teacher.endpoint
    if e is None:
        return {**evaluate_lm(teacher, data.val, vocab, progress=shown and shown.format("teacher"),
                              text_bytes=text_bytes), "params": lm_models.count_parameters(teacher)}
    scored = served_logprobs(cfg, data.val, root / "val", vocab)
    return {**evaluate_logprobs(scored, data.val, text_bytes), "params": lm_models.count_parameters(teacher),
            "served": f"{e.model} at {e.url}"}


def _one_block(model: nn.Module, data: TextSplits) -> torch.Tensor:
    """One held-out block at batch 1, on the model's device: what the forward times are measured on."""
    return data.val.input_ids[:1].to(next(model.parameters()).device)


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError("LM distillation needs transformers: pip install 'distill[lm]'") from None
