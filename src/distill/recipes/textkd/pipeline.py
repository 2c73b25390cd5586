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
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.core.errors import DataError
from distill.core.files import atomic_write_text
from distill.data.prompts import render
from distill.eval.text import EvalItem, Prices, metrics_of, retention, score
from distill.recipes.textkd import examples as ex
from distill.recipes.textkd.config import PromptConfig, TextKDConfig, TextTeacherConfig
from distill.recipes.textkd.filters import filter_records, load_check
from distill.teachers.generate import (
    GenerateStats,
    PromptRow,
    generate,
    pending,
    read_records,
    stats_dict,
)
from distill.teachers.text import LocalTextTeacher, Sampling, TextTeacher


def run_textkd(cfg: TextKDConfig, resume: bool = False) -> Path:
    """Run the whole job; returns the run directory (which holds report.md)."""
    from distill.core.rundir import open_run_dir
    from distill.recipes.lm.pipeline import require_transformers

    require_transformers()
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


@dataclass
class Pool:
    """The teacher's answers on the unlabelled pool that parse to a label, and how good they are."""

    kept: list[dict[str, Any]]
    counts: dict[str, int]
    label_accuracy: float | None  # of the kept answers against the held-back gold labels, when known


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
                                template=_template(cfg.prompt, split), concurrency=cfg.concurrency, quiet=cfg.quiet)
                for split, rows in prompts.items()}


def load_examples(cfg: TextKDConfig, run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Train/eval (and pool) examples, written once to data/ so a resumed run reads the very same ones."""
    names = ("train", "eval", "pool") if _has_pool(cfg) else ("train", "eval")
    out = {}
    for split in names:
        path = run_dir / "data" / f"{split}.jsonl"
        if path.is_file():
            out[split] = [json.loads(line) for line in path.read_text().splitlines()]
    if len(out) == len(names):
        return out
    out = _sample(cfg)
    for split, rows in out.items():
        atomic_write_text(run_dir / "data" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return out


def _has_pool(cfg: TextKDConfig) -> bool:
    return bool(cfg.data.unlabeled_examples) or cfg.data.unlabeled_path is not None


def _sample(cfg: TextKDConfig, with_pool: bool = True) -> dict[str, list[dict[str, Any]]]:
    d = cfg.data
    if d.source == "jsonl":
        from distill.data.corpora import read_json_lines

        rows = read_json_lines(d.path, "data.path")  # type: ignore[arg-type]
        for n, r in enumerate(rows, 1):
            if not {"id", "input", "label"} <= set(r):
                raise DataError(f"{d.path}, row {n}: needs `id`, `input` and `label` fields (has {sorted(r)}).")
        items = [(str(r["id"]), str(r["input"]), str(r["label"])) for r in rows]
    else:
        from distill.data.corpora import read_bbc_news

        items = [(a.id, a.text, a.label) for a in read_bbc_news(d.path)]
    from distill.data.corpora import LabelledText, stratified_split

    texts = [LabelledText(i, _cut(t, d.max_words), lab) for i, t, lab in items]
    parts = stratified_split(texts, {"train": d.train_examples, "eval": d.eval_examples}, seed=d.seed)
    out = {k: [{"id": x.id, "input": x.text, "label": x.label} for x in v] for k, v in parts.items()}
    if not with_pool:
        return out
    if d.unlabeled_examples:
        out["pool"] = _random_pool(texts, out, d.unlabeled_examples, d.seed)
    elif d.unlabeled_path is not None:
        out["pool"] = _pool_file(d.unlabeled_path, d.max_words, {r["id"] for rows in out.values() for r in rows})
    return out


def _cut(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def _random_pool(texts: list[Any], taken: dict[str, list[dict[str, Any]]], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` inputs drawn at random (not label-balanced: a real pool is not) from those no split holds."""
    import random

    used = {r["id"] for rows in taken.values() for r in rows}
    rest = [x for x in texts if x.id not in used]
    if n > len(rest):
        raise DataError(f"data.unlabeled_examples={n}, but only {len(rest)} examples are left after the "
                        f"{len(used)} labelled ones; lower it.")
    picked = random.Random(seed + 1).sample(rest, n)
    return [{"id": x.id, "input": x.text, "gold": x.label} for x in sorted(picked, key=lambda x: x.id)]


def _pool_file(path: Path, words: int, labelled_ids: set[str]) -> list[dict[str, Any]]:
    from distill.data.corpora import read_json_lines

    rows = read_json_lines(path, "data.unlabeled_path")
    out, seen = [], set()
    for n, r in enumerate(rows, 1):
        if "input" not in r or not str(r["input"]).strip():
            raise DataError(f"{path}, row {n}: needs a non-empty `input` field (has {sorted(r)}).")
        rid = str(r.get("id", f"pool-{n}"))
        if rid in seen or rid in labelled_ids:
            raise DataError(f"{path}, row {n}: id {rid!r} is already used (by an earlier pool row or a labelled "
                            "example); give every row its own `id`.")
        seen.add(rid)
        out.append({"id": rid, "input": _cut(str(r["input"]), words), "gold": r.get("label")})
    if not out:
        raise DataError(f"{path} (data.unlabeled_path) has no rows.")
    return out


def prompts_for(cfg: TextKDConfig, path: Path | None, split: str) -> tuple[list[PromptRow], str]:
    """`distill generate`'s prompts: a JSONL file (rows with `messages`, or template fields), or a
    split of the config's labelled dataset; and the template used."""
    template = _template(cfg.prompt, split)
    if path is None:
        return prompt_rows(cfg.prompt, _sample(cfg, with_pool=False)[split], split), template
    from distill.data.corpora import read_json_lines

    rows = [{**r, "id": str(r.get("id", f"row-{n}"))} for n, r in enumerate(read_json_lines(path, "--prompts"), 1)]
    plain = [r for r in rows if "messages" not in r]
    with_messages = [PromptRow(id=r["id"], messages=r["messages"], fields={k: v for k, v in r.items()
                                                                          if k not in ("id", "messages")})
                     for r in rows if "messages" in r]
    return with_messages + prompt_rows(cfg.prompt, plain, str(path)), template


def _template(p: PromptConfig, split: str) -> str:
    """The train template may name the gold label (rationalisation); eval and the pool never see it."""
    return p.eval_template if split in ("eval", "pool") and p.eval_template else p.template


def prompt_rows(p: PromptConfig, rows: list[dict[str, Any]], split: str) -> list[PromptRow]:
    """System message, few-shot turns and the filled template, per example."""
    template = _template(p, split)
    head = [{"role": "system", "content": p.system}] if p.system else []
    for n, shot in enumerate(p.shots, 1):
        fields = shot.model_dump()
        head += [{"role": "user", "content": render(template, fields, f"prompt.shots[{n}]", "prompt.template")},
                 {"role": "assistant", "content": render(p.response_format, fields, f"prompt.shots[{n}]",
                                                         "prompt.response_format")}]
    return [PromptRow(id=r["id"], fields={k: v for k, v in r.items() if k != "id"}, messages=head + [
        {"role": "user", "content": render(template, r, f"{split} example {r['id']!r}", "prompt.template")}])
        for r in rows]


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
                 quiet=cfg.quiet, name=f"{kind} s{seed}")
    save_pretrained_atomic(out.model, tokenizer, stage / "model")


# --------------------------------------------------------------------------- report


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
            "train_examples": trained_on or {kind: kept for kind in cfg.kinds}}


def _verdict(r: dict[str, Any]) -> list[str]:
    """The answer first: did any student that learnt from the teacher beat label-only training?

    Won: ahead by more than twice the larger standard deviation (with one seed, only "ahead").
    When none won, the likely cause from the measurements, and what to try.
    """
    students = r["students"]
    if "label_only" not in students or len(students) < 2:
        return []
    base = students["label_only"]["accuracy"]
    margins = {k: (m["accuracy"]["mean"] - base["mean"], 2 * max(m["accuracy"]["std"], base["std"]))
               for k, m in students.items() if k != "label_only"}
    best = max(margins, key=lambda k: margins[k][0])
    gain, noise = margins[best]
    one_seed = len(r["seeds"]) < 2
    line = (f"{best} {students[best]['accuracy']['mean'] * 100:.1f}% vs label-only {base['mean'] * 100:.1f}% "
            f"({gain * 100:+.1f} points")
    if gain > noise and not one_seed:
        return [f"**{best} beats label-only training**: {line}, more than twice the larger std).", ""]
    if gain > 0 and one_seed:
        return [f"**{best} is ahead of label-only training on one seed**: {line}); run more `seeds` to "
                "know whether it wins.", ""]
    where = f", within twice the larger std, {noise * 100:.1f}" if gain > 0 else ""
    return [f"**No student that learnt from the teacher beats label-only training**: {line}{where}). "
            f"{_likely_cause(r, base['mean'])}.", ""]


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
            f"layers {r['student_layers']}, trained {data}, seeds {r['seeds']}.")


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
