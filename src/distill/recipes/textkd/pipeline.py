"""The `distill textkd` job: labelled data → teacher rationales and answers (over HTTP or in
process) → filter → (optionally) the teacher fine-tuned on the kept examples → the teacher's answers
on the eval set and on an unlabelled pool → students trained label-only (gold labels alone),
pseudo-label, sequence-level and step-by-step → teacher and students scored on one eval set →
report. Every stage is resumable.

Run directory:
  config.yaml, manifest.json, report.json, report.md
  data/{train,eval,pool}.jsonl          the examples (id, input, label; the pool's label as `gold`)
  generated/{train,eval,pool}.jsonl     teacher responses (+ .meta.json), appended as they arrive
  teacher/                              the fine-tuned teacher (teacher.finetune): model/ in HF format
  students/<kind>-s<seed>/              last.safetensors (resume), model/ (HF format), eval.json
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.core.threads import choose_threads
from distill.training.tracking import check_report_to
from distill.core.checkpoint import drop_training_state
from distill.core.errors import DataError
from distill.core.files import atomic_write_text
from distill.eval.text import EvalItem, Prices, metrics_of, score
from distill.recipes.textkd import examples as ex
from distill.recipes.textkd.config import TextKDConfig, TextTeacherConfig
from distill.recipes.textkd.filters import filter_records, load_check
from distill.recipes.textkd.report import build_report, render_textkd_report
from distill.recipes.textkd.sampling import (
    Pool,
    has_pool,
    prompt_rows,
    sample_examples,
    template_for,
)
from distill.teachers.generate import (
    GenerateStats,
    PromptRow,
    generate,
    pending,
    read_records,
)
from distill.teachers.text import LocalTextTeacher, Sampling, TextTeacher


def run_textkd(cfg: TextKDConfig, resume: bool = False) -> Path:
    """Run the whole job; returns the run directory (which holds report.md)."""
    from distill.core.rundir import open_run_dir
    from distill.recipes.lm.pipeline import require_transformers

    require_transformers()
    choose_threads()
    check_report_to(cfg.report_to)
    cfg.student_source  # noqa: B018  (fails now, not after generation, when no student can be built)
    cfg.check_finetune()
    from distill.models.causal_lm import check_layers

    check_layers(cfg.student_source, cfg.student.layers)  # not after minutes of generation
    run_dir = open_run_dir(cfg, resume)
    splits = load_examples(cfg, run_dir)
    labels = sorted({e["label"] for e in splits["train"] + splits["eval"]})
    gen = {"train": _generate(cfg.teacher, {"train": prompt_rows(cfg.prompt, splits["train"], "train")}, cfg,
                              run_dir)["train"]}
    check = load_check(cfg.check, "check") if cfg.check else None
    kept = filter_records(read_records(_gen_path(run_dir, "train")), labels=labels, check=check)
    if not kept.kept:
        raise DataError(f"The filter kept none of {kept.counts['total']} teacher responses ({kept.counts}); "
                        f"read {_gen_path(run_dir, 'train')} and fix the prompt (prompt.* keys).")
    labelled = [_example(r, r["label"], "labelled") for r in kept.kept]
    answering, prompt = cfg.teacher, cfg.prompt
    if cfg.teacher.finetune is not None:
        from distill.recipes.textkd.finetune import finetuned_teacher

        answering = cfg.teacher.model_copy(update={"model": finetuned_teacher(cfg, labelled, run_dir)})
        prompt = cfg.prompt.model_copy(update={"shots": []})  # fine-tuning replaced the few-shot turns
    asked = {split: prompt_rows(prompt, splits[split], split) for split in ("eval", "pool") if split in splits}
    # named by what it is, not where it lies, so a moved or copied run directory still resumes
    gen.update(_generate(answering, asked, cfg, run_dir, served_as=f"{cfg.teacher.model} fine-tuned"
                         if cfg.teacher.finetune is not None else None))
    pool = _pool_examples(run_dir, labels) if "pool" in splits else None
    train_examples = labelled + (pool.kept if pool else [])
    teacher_eval, teacher_text = _teacher_eval(cfg, run_dir, labels)
    per_kind = {kind: _for_kind(kind, train_examples) for kind in cfg.kinds}
    students = {f"{kind}-s{seed}": train_and_score(cfg, kind, seed, per_kind[kind], splits["eval"], labels, run_dir,
                                                   teacher_text) for kind in cfg.kinds for seed in cfg.seeds}
    report = build_report(cfg, teacher_eval, students, kept.counts, gen, len(labelled), pool,
                          {kind: len(rows) for kind, rows in per_kind.items()})
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", render_textkd_report(report))
    return run_dir


def _example(rec: dict[str, Any], label: str, source: str) -> dict[str, Any]:
    return {"id": rec["id"], "input": rec["input"], "label": label, "response": rec["response"],
            "rationale": rec["rationale"], "logprobs": rec.get("logprobs"), "source": source}


def _for_kind(kind: str, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """label_only learns from the gold labels alone; every other kind also from the teacher's pool."""
    return [e for e in examples if e["source"] == "labelled"] if kind == "label_only" else examples


def _pool_examples(run_dir: Path, labels: list[str]) -> Pool:
    """Pool records whose answer names a label: that answer becomes the example's label."""
    kept = filter_records(read_records(_gen_path(run_dir, "pool")), labels=labels)
    examples = [_example(r, r["answer"], "pool") for r in kept.kept]
    golds = [(r["answer"], r["gold"]) for r in kept.kept if r.get("gold") is not None]
    accuracy = sum(a.lower() == str(g).lower() for a, g in golds) / len(golds) if golds else None
    return Pool(examples, kept.counts, accuracy)


def _generate(teacher_cfg: TextTeacherConfig, prompts: dict[str, list[PromptRow]], cfg: TextKDConfig,
              run_dir: Path, served_as: str | None = None) -> dict[str, GenerateStats]:
    """Teacher responses for each split; the teacher is not even started when all are on disk."""
    sampling = Sampling(**cfg.sampling.model_dump())
    if not any(pending(rows, _gen_path(run_dir, split), sampling.n) for split, rows in prompts.items()):
        return {split: GenerateStats(len(rows), len(rows), 0, 0.0, 0, 0) for split, rows in prompts.items()}
    with open_teacher(teacher_cfg, served_as) as teacher:
        return {split: generate(teacher, rows, _gen_path(run_dir, split), sampling=sampling,
                                template=template_for(cfg.prompt, split), concurrency=cfg.concurrency, quiet=cfg.quiet)
                for split, rows in prompts.items()}


def load_examples(cfg: TextKDConfig, run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Train/eval (and pool) examples, written once to data/ so a resumed run reads the very same ones."""
    names = ("train", "eval", "pool") if has_pool(cfg) else ("train", "eval")
    out = {}
    for split in names:
        path = run_dir / "data" / f"{split}.jsonl"
        if path.is_file():
            out[split] = [json.loads(line) for line in path.read_text().splitlines()]
    if len(out) == len(names):
        return out
    out = sample_examples(cfg)
    for split, rows in out.items():
        atomic_write_text(run_dir / "data" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return out


@contextlib.contextmanager
def open_teacher(t: TextTeacherConfig, served_as: str | None = None) -> Iterator[TextTeacher]:
    """The configured teacher; `serve` starts `distill serve` on loopback for the duration.

    `served_as`: the model's name in requests and in the teacher's identity (default `t.model`).
    """
    from distill.teachers.remote import OpenAITeacher

    common = {"api_key_env": t.api_key_env, "api_key_file": t.api_key_file, "timeout_s": t.timeout_s,
              "max_retries": t.max_retries, "requests_per_s": t.requests_per_s}
    if t.backend == "openai":
        yield OpenAITeacher(base_url=t.base_url, model=t.model, **common)  # type: ignore[arg-type]
    elif t.backend == "local":
        teacher = LocalTextTeacher(t.model, max_batch=t.max_batch, name=served_as)
        try:
            yield teacher
        finally:
            teacher.close()
    else:
        from distill.serve.server import make_server

        name = served_as or t.model
        server = make_server(t.model, port=0, max_batch=t.max_batch, model_name=name)
        server.start_background()
        try:
            keyless = {**common, "api_key_env": None, "api_key_file": None}  # our own loopback server
            yield _Served(OpenAITeacher(base_url=f"{server.url}/v1", model=name, **keyless))
        finally:
            server.shutdown()


class _Served:
    """The HTTP client of a server started for this run: its identity leaves out the (random) port,
    so a resumed run, on a new port, recognises its own generated files."""

    def __init__(self, client: Any):
        self.client = client

    @property
    def identity(self) -> dict[str, Any]:
        return {"backend": "serve", "model": self.client.model}

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> list[Any]:
        return self.client.complete(messages, sampling)


def _gen_path(run_dir: Path, split: str) -> Path:
    return run_dir / "generated" / f"{split}.jsonl"


def _teacher_eval(cfg: TextKDConfig, run_dir: Path, labels: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The teacher's answers to the eval prompts, scored like the students'; and its text by id."""
    rows = [{"id": r["id"], "label": r["label"], "output": r["response"], "latency_s": r["latency_s"],
             "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"]}
            for r in read_records(_gen_path(run_dir, "eval")) if r["sample"] == 0]
    prices = Prices(cfg.teacher.price_prompt, cfg.teacher.price_completion)
    return metrics_of(rows, labels, "answer", prices), {r["id"]: r["output"] for r in rows}


def train_and_score(cfg: TextKDConfig, kind: str, seed: int, train_examples: list[dict[str, Any]],
                    eval_rows: list[dict[str, Any]], labels: list[str], run_dir: Path,
                    teacher_text: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one student (or reload it) and score it on the eval set; cached in eval.json.

    A student that writes rationales (seq_kd) is also compared with the teacher's text on the same
    prompt (ROUGE-L `similarity`).
    """
    stage = run_dir / "students" / f"{kind}-s{seed}"
    done = stage / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    model_dir = stage / "model"
    if not (model_dir / "config.json").is_file():
        _train_student(cfg, kind, seed, train_examples, stage)
    drop_training_state(stage, keep=cfg.keep_state)  # also after a kill right after the model was written
    answer_format = "answer" if kind in ("seq_kd", "token_kd") else "label"
    writes_text = kind in ("seq_kd", "token_kd")
    items = [EvalItem(id=r["id"], label=r["label"], messages=[{"role": "user", "content": (
        r["input"] if writes_text else ex.label_prompt(r["input"]))}],
        reference=(teacher_text or {}).get(r["id"]) if writes_text else None) for r in eval_rows]
    max_tokens = cfg.sampling.max_tokens if writes_text else cfg.label_max_tokens
    student = LocalTextTeacher(str(model_dir), max_batch=cfg.teacher.max_batch)
    try:
        metrics, predictions = score(student, items, labels=labels, sampling=Sampling(max_tokens=max_tokens),
                                     answer_format=answer_format, concurrency=cfg.concurrency,
                                     prices=Prices(cfg.student.price_prompt, cfg.student.price_completion))
    finally:
        student.close()
    out = {"kind": kind, "seed": seed, "metrics": metrics, "predictions": predictions}
    atomic_write_text(done, json.dumps(out, indent=2))
    return out


def _train_student(cfg: TextKDConfig, kind: str, seed: int, train_examples: list[dict[str, Any]],
                   stage: Path) -> None:
    from distill.losses.config import TokenKDConfig
    from distill.models import causal_lm as lm_models
    from distill.models.causal_lm import save_pretrained_atomic
    from distill.training.lm import fit_lm

    key = "student.model" if cfg.student.model else "teacher.model"
    tokenizer = lm_models.load_tokenizer(cfg.student_source, key)
    source = lm_models.load_causal_lm(cfg.student_source, key)
    student = lm_models.student_from_teacher(source, layers=cfg.student.layers, seed=seed)
    del source
    signal, kd = None, TokenKDConfig(ratio=0.0)
    if kind == "token_kd":
        from distill.teachers.logprobs import topk_blocks

        as_student = [{**e, "messages": [{"role": "user", "content": e["input"]}]} for e in train_examples]
        blocks, signal, counts = topk_blocks(as_student, tokenizer, cfg.student.seq_len, cfg.sampling.top_logprobs)
        if counts["used"] == 0:
            raise DataError(f"token_kd: no kept response could be aligned with the student's tokens ({counts}); "
                            "the teacher must return logprobs and share the student's tokenizer.")
        kd = cfg.kd
    else:
        rows = ex.task_rows(train_examples, kind, cfg.rationale_weight)
        blocks = ex.encode_weighted(rows, tokenizer, cfg.student.seq_len, source=f"{kind} training rows")
    train = cfg.train.model_copy(update={"seed": seed})
    out = fit_lm(student, blocks, train=train, kd=kd, teacher=signal, vocab=len(tokenizer),
                 pad_id=tokenizer.pad_token_id, checkpoint_dir=stage, resume=True, device=cfg.device,
                 quiet=cfg.quiet, name=f"{kind} s{seed}", tracking=cfg.report_to, project=cfg.name)
    save_pretrained_atomic(out.model, tokenizer, stage / "model")
    drop_training_state(stage, keep=cfg.keep_state)


# --------------------------------------------------------------------------- report


