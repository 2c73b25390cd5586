"""The `distill task` job: prompts → (optionally) the teacher fine-tuned on the reference answers →
the teacher's answers to the held-out prompts (its success) and, for seq_kd and mixed, to the
training prompts → students of the same initialisation trained by every arm, every seed, for the
same steps, their task success measured as they train → report. Every stage is resumable.

Arms (`distill.recipes.task.config.ARMS_TEXT`): answer_sft and seq_kd learn from written answers
(the references; the teacher's), on_policy from answers the student writes itself, each token
scored by the teacher (`distill.teachers.responses.ResponseTeacher`: in this process, or a server's
top-k log-probs), mixed from both. The teacher reads each row's privileged context, when the row has
one; students never do.

Run directory:
  config.yaml, manifest.json, report.json, report.md, success.png
  data/{train,eval}.jsonl               the prompts (what a resumed run reads again)
  teacher/model/                        the fine-tuned teacher (teacher.finetune)
  generated/{train,eval}.jsonl          the teacher's answers, appended as they arrive
  students/<arm>-s<seed>/               metrics.jsonl (success as it trained), model/, eval.json
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import ConfigError, DataError
from distill.core.files import atomic_write_text
from distill.data.tasks import TaskPrompt, encode_prompts, prompt_ids, read_task_prompts
from distill.eval.task import TaskScore, answer_greedily
from distill.recipes.task.config import TaskConfig
from distill.teachers.responses import Scorer

LEARNS_FROM_TEACHER_TEXT = ("seq_kd", "mixed")
SCORED_BY_TEACHER = ("on_policy", "mixed")


def run_task(cfg: TaskConfig, resume: bool = False) -> Path:
    """Run the whole job; returns the run directory (which holds report.md)."""
    from distill.core.rundir import open_run_dir
    from distill.core.threads import choose_threads
    from distill.training.tracking import check_report_to
    from distill.models.causal_lm import check_layers, load_tokenizer
    from distill.recipes.lm.pipeline import require_transformers
    from distill.recipes.task.report import build_report, render_report

    require_transformers()
    choose_threads()
    check_report_to(cfg.report_to)
    cfg.check_teacher()
    check_layers(cfg.student_source, cfg.student.layers)
    score = TaskScore(cfg.task.score, cfg.task.pattern, cfg.task.check)
    train_rows, eval_rows = load_prompts(cfg)
    tokenizer = load_tokenizer(cfg.student_source, "student.model" if cfg.student.model else "teacher.model")
    check_job(cfg, score, train_rows, eval_rows, tokenizer)  # everything refused before any compute
    run_dir = open_run_dir(cfg, resume)
    _write_prompts(run_dir, train_rows, eval_rows)
    teacher_model = task_teacher(cfg, train_rows, run_dir)
    teacher_eval = _teacher_answers(cfg, teacher_model, eval_rows, run_dir, "eval", greedy=True)
    teacher_success = [score(row, teacher_eval[row.id]) for row in eval_rows]
    written = {"answer_sft": [r.reference for r in answered(train_rows)]}
    mixing = any(cfg.learns_written(arm) for arm in cfg.arms)
    if "seq_kd" in cfg.arms or (mixing and cfg.on_policy.off_policy == "teacher"):
        answers = _teacher_answers(cfg, teacher_model, train_rows, run_dir, "train", greedy=False)
        written["seq_kd"] = written["mixed"] = [answers[r.id] for r in train_rows]
    if cfg.on_policy.off_policy == "reference":
        written["mixed"] = written["answer_sft"]
    if cfg.on_policy.start > 0:
        written["on_policy"] = written["mixed"]
    before = _student_before(cfg, eval_rows, score, tokenizer, run_dir)
    students = {}
    with _teacher_scoring(cfg, teacher_model, tokenizer) as scoring:
        if scoring is not None and cfg.teacher.backend != "local":
            probe(cfg, scoring, train_rows[0], tokenizer)  # a server that cannot score: said before any student trains
        for seed in cfg.seeds:
            for arm in cfg.arms:
                students[f"{arm}-s{seed}"] = train_arm(cfg, arm, seed, train_rows, eval_rows, written.get(arm),
                                                       score, scoring, tokenizer, run_dir)
    report = build_report(cfg, teacher_success, students, eval_rows, tokenizer, before)
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", render_report(report, run_dir))
    from distill.export.card import task_card, write_card

    for s in students.values():
        write_card(run_dir / "students" / f"{s['arm']}-s{s['seed']}" / "model", task_card(report, s["arm"], s["seed"]))
    return run_dir


def load_prompts(cfg: TaskConfig) -> tuple[list[TaskPrompt], list[TaskPrompt]]:
    """(train, eval) prompts; without data.eval_source, the first eval_examples rows of the source are
    held out and the next train_examples train."""
    d = cfg.data
    if d.source.startswith("builtin:"):
        from distill.data.builtin_tasks import builtin_task

        name = d.source.removeprefix("builtin:")
        held = [] if d.eval_source else builtin_task(name, d.eval_examples, d.seed)
        train = builtin_task(name, d.train_examples, d.seed, offset=len(held))
    else:
        rows = read_task_prompts(d.source, key="data.source")
        held = [] if d.eval_source else rows[: d.eval_examples]
        train = rows[len(held): len(held) + d.train_examples]
    evaluated = held or read_task_prompts(d.eval_source, key="data.eval_source", limit=d.eval_examples)
    if d.answered is not None:  # the rest keep their prompts only
        train = train[: d.answered] + [replace(r, reference=None) for r in train[d.answered:]]
    if not train:
        raise DataError(f"data.source: {d.source} has no rows left to train on after the {len(held)} held out "
                        "for evaluation; give more rows, lower data.eval_examples, or set data.eval_source.")
    return train, evaluated


def check_job(cfg: TaskConfig, score: TaskScore, train: list[TaskPrompt], held: list[TaskPrompt],
              tokenizer: Any) -> None:
    """Refuse what the job cannot do, naming the setting or row, before the teacher is touched."""
    if score.needs_reference:
        missing = [r.id for r in held if r.reference is None]
        if missing:
            raise DataError(f"task.score={score.kind} compares answers with references, but {len(missing)} held-out "
                            f"prompts have none (first: {missing[0]!r}); add answers, or use task.score=check.")
    mixed_by_reference = "mixed" in cfg.arms and cfg.on_policy.off_policy == "reference"
    if ("answer_sft" in cfg.arms or mixed_by_reference or cfg.teacher.finetune is not None) and not answered(train):
        why = ("arms has answer_sft" if "answer_sft" in cfg.arms else "on_policy.off_policy=reference"
               if mixed_by_reference else "teacher.finetune is set")
        raise DataError(f"{why}, which trains on reference answers, but none of the {len(train)} training prompts "
                        "has one (data.answered, or the rows' answers); add answers, or drop it.")
    longest = max(len(prompt_ids(tokenizer, r.messages)) for r in train + held)
    need = longest + max(cfg.on_policy.max_new_tokens if any(a in cfg.arms for a in SCORED_BY_TEACHER) else 0,
                         cfg.sampling.max_tokens if any(a in cfg.arms for a in LEARNS_FROM_TEACHER_TEXT) else 0)
    if need > cfg.student.seq_len:
        raise ConfigError(f"student.seq_len={cfg.student.seq_len} is too short: the longest prompt is {longest} tokens "
                          f"and answers may be {need - longest} (on_policy.max_new_tokens, sampling.max_tokens); set "
                          f"student.seq_len={need} or more, or lower those.")
    _teacher_fits(cfg, train + held)
    if score.kind == "check":  # the user's function, tried once on a reference (or nothing) before any compute
        score(held[0], held[0].reference or "")
    if "answer_sft" in cfg.arms:  # a reference longer than the context: refused now, naming its row
        rows = answered(train)
        encode_prompts(rows, tokenizer, cfg.student.seq_len, source="data.source", responses=[r.reference for r in rows])
    if any(a in cfg.arms for a in SCORED_BY_TEACHER):
        _same_vocabulary(cfg, tokenizer)


def _teacher_fits(cfg: TaskConfig, rows: list[TaskPrompt]) -> None:
    """A local teacher's context must hold its longest prompt (with the context) and an answer."""
    if cfg.teacher.backend == "openai":
        return  # the server says so itself, per request
    from distill.models.causal_lm import context_window, load_tokenizer

    window = context_window(cfg.teacher.model)
    if window is None:
        return
    tokenizer = load_tokenizer(cfg.teacher.model)
    lengths = {r.id: len(prompt_ids(tokenizer, r.teacher_messages())) for r in rows}
    longest = max(lengths, key=lengths.get)  # type: ignore[arg-type]
    answer = max(cfg.answer_tokens, cfg.sampling.max_tokens, cfg.on_policy.max_new_tokens)
    if lengths[longest] + answer > window:
        raise DataError(f"prompt row {longest!r}: the teacher reads {lengths[longest]} prompt tokens (with its context) "
                        f"and may answer {answer} more, beyond its context window of {window} tokens "
                        f"({cfg.teacher.model}); shorten the row's context or prompt, or lower answer_tokens.")


def answered(rows: list[TaskPrompt]) -> list[TaskPrompt]:
    """The rows that have a reference answer."""
    return [r for r in rows if r.reference is not None]


def _same_vocabulary(cfg: TaskConfig, tokenizer: Any) -> None:
    """A served teacher scores the student's token ids, so it must share the student's vocabulary (a
    local teacher with another one reads the answers' text instead)."""
    if cfg.teacher.backend != "serve" or not cfg.student.model:
        return  # local: any vocabulary; built from the teacher: its tokenizer; openai: the server's to check
    from distill.models.causal_lm import load_tokenizer

    if load_tokenizer(cfg.teacher.model).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"arms {[a for a in cfg.arms if a in SCORED_BY_TEACHER]} ask the served teacher to score the "
                          f"student's answer tokens, but student.model={cfg.student.model} and teacher.model="
                          f"{cfg.teacher.model} have different vocabularies; set teacher.backend=local (the teacher "
                          "then reads the answers' text, aligned where both read the same characters), or use a "
                          "student built from the teacher (student.model=null).")


def _write_prompts(run_dir: Path, train: list[TaskPrompt], held: list[TaskPrompt]) -> None:
    for split, rows in (("train", train), ("eval", held)):
        path = run_dir / "data" / f"{split}.jsonl"
        if not path.is_file():
            atomic_write_text(path, "".join(json.dumps(asdict(r)) + "\n" for r in rows))


def task_teacher(cfg: TaskConfig, train: list[TaskPrompt], run_dir: Path) -> str:
    """The teacher's model: as given, or fine-tuned on the training prompts' reference answers (as it
    reads them: with their context)."""
    if cfg.teacher.finetune is None:
        return cfg.teacher.model
    from distill.data.tokens import chat_ids
    from distill.models.causal_lm import load_tokenizer
    from distill.recipes.textkd.finetune import finetune_on_rows

    rows = [{"messages": [*r.teacher_messages(), {"role": "assistant", "content": r.reference}]} for r in answered(train)]
    tokenizer = load_tokenizer(cfg.teacher.model)  # the teacher reads the context too: its rows are longer
    longest = max(len(chat_ids(tokenizer, row["messages"], add_generation_prompt=False)) for row in rows)
    return finetune_on_rows(cfg.teacher.model, rows, cfg.teacher.finetune, seq_len=longest,
                            stage=run_dir / "teacher", device=cfg.device, quiet=cfg.quiet, keep_state=cfg.keep_state,
                            source="teacher.finetune rows (the training prompts and their answers)",
                            tracking=(cfg.report_to, cfg.name))


def _teacher_answers(cfg: TaskConfig, model: str, rows: list[TaskPrompt], run_dir: Path, split: str, *,
                     greedy: bool) -> dict[str, str]:
    """The teacher's answer to every prompt (read with its context), journaled in generated/<split>.jsonl
    so a killed run asks only for the rest."""
    from distill.recipes.textkd.pipeline import open_teacher
    from distill.teachers.generate import PromptRow, generate, pending, read_records
    from distill.teachers.text import Sampling

    path = run_dir / "generated" / f"{split}.jsonl"
    sampling = Sampling(max_tokens=cfg.answer_tokens, temperature=0.0) if greedy else \
        Sampling(**cfg.sampling.model_dump())
    asked = [PromptRow(r.id, r.teacher_messages(), {}) for r in rows]
    if pending(asked, path, 1):
        tuned = cfg.teacher.finetune is not None
        with open_teacher(cfg.teacher.model_copy(update={"model": model}),
                          served_as=f"{cfg.teacher.model} fine-tuned" if tuned else None) as teacher:
            generate(teacher, asked, path, sampling=sampling, concurrency=cfg.concurrency, quiet=cfg.quiet)
    return {r["id"]: r["response"] for r in read_records(path) if r["sample"] == 0}


@dataclass(frozen=True)
class TeacherScoring:
    """What scores the students' answers token by token, and the tokenizer whose chat template writes
    the teacher's prompts (the teacher's own; an endpoint's: the student's, whose ids it reads). A
    local teacher with another vocabulary reads the answers' text (`cross`: its model and settings)."""

    scorer: Scorer | None
    tokenizer: Any
    cross: dict[str, Any] | None = None

    def teacher(self, rows: list[TaskPrompt], student_tokenizer: Any) -> Any:
        """The signal for students answering `rows` (a dataset index is a row)."""
        from distill.teachers.responses import CrossResponseTeacher, ResponseTeacher

        prompts = [prompt_ids(self.tokenizer, r.teacher_messages()) for r in rows]
        if self.cross is not None:
            return CrossResponseTeacher(prompts=prompts, teacher_tokenizer=self.tokenizer,
                                        student_tokenizer=student_tokenizer, **self.cross)
        assert self.scorer is not None
        return ResponseTeacher(self.scorer, prompts, student_tokenizer.pad_token_id)


@contextlib.contextmanager
def _teacher_scoring(cfg: TaskConfig, model: str, tokenizer: Any) -> Iterator[TeacherScoring | None]:
    """The teacher in this process (local), or a server's top-k log-probs (serve: `distill serve`
    started on loopback; openai: teacher.base_url)."""
    if not any(a in cfg.arms for a in SCORED_BY_TEACHER):
        yield None
        return
    from distill.models.causal_lm import load_tokenizer
    from distill.teachers.endpoint import EndpointTopK
    from distill.teachers.responses import endpoint_scorer, live_scorer

    vocab = len(tokenizer)
    t = cfg.teacher
    if t.backend == "local":
        from distill.models.causal_lm import load_causal_lm

        teacher, teacher_tokenizer = load_causal_lm(model, dtype=getattr(torch, cfg.scoring_dtype())), load_tokenizer(model)
        if teacher_tokenizer.get_vocab() == tokenizer.get_vocab():
            yield TeacherScoring(live_scorer(teacher, vocab), teacher_tokenizer)
        else:  # another vocabulary: it reads the answers' text, aligned where both read the same characters
            from distill.data.alignment import vocab_map
            from distill.models.generation import eos_ids_of

            yield TeacherScoring(None, teacher_tokenizer, {
                "model": teacher, "vocab_map": vocab_map(teacher_tokenizer, tokenizer), "k": t.top_k,
                "vocab": len(teacher_tokenizer), "teacher_eos": eos_ids_of(teacher, teacher_tokenizer)})
    elif t.backend == "openai":
        yield TeacherScoring(endpoint_scorer(EndpointTopK(
            t.base_url, t.model, k=t.top_k, vocab=vocab, concurrency=cfg.concurrency, api_key_env=t.api_key_env,
            timeout_s=t.timeout_s, max_retries=t.max_retries), sampled=t.logprobs == "sampled"), tokenizer)
    else:
        from distill.serve.server import make_server

        server = make_server(model, port=0, max_batch=t.max_batch, model_name="teacher")
        server.start_background()
        try:
            yield TeacherScoring(endpoint_scorer(EndpointTopK(
                f"{server.url}/v1", "teacher", k=t.top_k, vocab=vocab, concurrency=cfg.concurrency,
                timeout_s=t.timeout_s, max_retries=t.max_retries), sampled=t.logprobs == "sampled"),
                load_tokenizer(model))
        finally:
            server.shutdown()


def _student_before(cfg: TaskConfig, held: list[TaskPrompt], score: TaskScore, tokenizer: Any,
                    run_dir: Path) -> float:
    """Held-out success of the student as every arm starts it (the first seed's), before any training."""
    from distill.models import causal_lm as lm_models

    done = run_dir / "students" / "before.json"
    if done.is_file():
        return json.loads(done.read_text())["success"]
    student = lm_models.student_from_teacher(lm_models.load_causal_lm(cfg.student_source), layers=cfg.student.layers,
                                             seed=cfg.seeds[0])
    outputs = answer_greedily(student, tokenizer, [prompt_ids(tokenizer, r.messages) for r in held],
                              max_new_tokens=cfg.answer_tokens)
    success = sum(score(r, o) for r, o in zip(held, outputs)) / len(held)
    atomic_write_text(done, json.dumps({"success": success, "outputs": outputs}, indent=2))
    return success


def probe(cfg: TaskConfig, scoring: TeacherScoring, row: TaskPrompt, tokenizer: Any) -> None:
    """Ask the server to score one short answer as training will; if it cannot, say what still works."""
    from distill.teachers.text import TeacherUnavailable

    ids = prompt_ids(scoring.tokenizer, row.teacher_messages()) + tokenizer("1 2 3")["input_ids"]
    assert scoring.scorer is not None  # a server: never the cross-vocabulary teacher, which runs here
    try:
        scoring.scorer(torch.tensor([ids]), torch.tensor([len(ids)]))
    except TeacherUnavailable as exc:
        other = ("teacher.logprobs=sampled, if it returns the log-prob of each prompt token without alternatives "
                 "(the on_policy arm then learns by the one-sample estimate of reverse KL), or "
                 if cfg.teacher.logprobs == "top_k" else "")
        raise TeacherUnavailable(f"{exc}\nThe arms {[a for a in cfg.arms if a in SCORED_BY_TEACHER]} need the "
                                 f"teacher's log-probs on the students' answers. What still works: {other}the arms "
                                 "that learn from its text, arms=[answer_sft, seq_kd].") from exc


def train_arm(cfg: TaskConfig, arm: str, seed: int, train: list[TaskPrompt], held: list[TaskPrompt],
              written: list[str | None] | None, score: TaskScore, scoring: TeacherScoring | None, tokenizer: Any,
              run_dir: Path) -> dict[str, Any]:
    """One student trained by `arm` with `seed` (or reloaded when done), scored on the held-out prompts."""
    from distill.core.checkpoint import drop_training_state
    from distill.losses.config import TokenKDConfig
    from distill.models import causal_lm as lm_models
    from distill.teachers.text import TeacherUnavailable
    from distill.training.config import OnPolicyConfig
    from distill.training.lm import fit_lm

    stage = run_dir / "students" / f"{arm}-s{seed}"
    done = stage / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    student = lm_models.student_from_teacher(lm_models.load_causal_lm(cfg.student_source), layers=cfg.student.layers,
                                             seed=seed)
    by_reference = arm == "answer_sft" or (cfg.learns_written(arm) and cfg.on_policy.off_policy == "reference")
    rows = answered(train) if by_reference else train
    if written is not None:  # an empty answer teaches nothing but to stop: left out
        kept = [i for i, w in enumerate(written) if w and w.strip()]
        rows, written = [rows[i] for i in kept], [written[i] for i in kept]
    blocks = encode_prompts(rows, tokenizer, cfg.student.seq_len, source="data.source", responses=written)
    prompts = [prompt_ids(tokenizer, r.messages) for r in held]

    def success(model: torch.nn.Module) -> dict[str, float]:
        outputs = answer_greedily(model, tokenizer, prompts, max_new_tokens=cfg.answer_tokens)
        return {"success": sum(score(r, o) for r, o in zip(held, outputs)) / len(held)}

    teacher = on_policy = None
    kd = TokenKDConfig(ratio=0.0)
    if arm in SCORED_BY_TEACHER:
        assert scoring is not None
        teacher = scoring.teacher(rows, tokenizer)
        on_policy = OnPolicyConfig(fraction=1.0 if arm == "on_policy" else cfg.on_policy.mix, start=cfg.on_policy.start,
                                   max_new_tokens=cfg.on_policy.max_new_tokens,
                                   temperature=cfg.on_policy.temperature, top_p=cfg.on_policy.top_p,
                                   prefetch=cfg.on_policy.prefetch)
        kd = cfg.kd
    try:
        out = fit_lm(student, blocks, train=cfg.train.model_copy(update={"seed": seed}), kd=kd, vocab=len(tokenizer),
                     teacher=teacher, on_policy=on_policy, pad_id=tokenizer.pad_token_id, checkpoint_dir=stage,
                     resume=True, device=cfg.device, quiet=cfg.quiet, name=f"{arm} s{seed}", evaluate=success,
                     tracking=cfg.report_to, project=cfg.name)
    except TeacherUnavailable as exc:  # the server went away mid-run: what is saved stays, and says so
        raise TeacherUnavailable(f"{exc}\n{arm} (seed {seed}) stopped; its steps up to the last checkpoint (every "
                                 f"train.save_every={cfg.train.save_every}) are kept in {stage}. Re-run the same "
                                 "command with --resume to continue from there.") from exc
    outputs = answer_greedily(out.model, tokenizer, prompts, max_new_tokens=cfg.answer_tokens)
    per_row = [score(r, o) for r, o in zip(held, outputs)]
    lm_models.save_pretrained_atomic(out.model, tokenizer, stage / "model")
    drop_training_state(stage, keep=cfg.keep_state)
    result = {"arm": arm, "seed": seed, "success": sum(per_row) / len(per_row), "per_row": per_row,
              "train_rows": len(rows),
              "outputs": outputs, "history": out.history,
              "parameters": sum(p.numel() for p in out.model.parameters())}
    atomic_write_text(done, json.dumps(result, indent=2))
    return result
