"""`distill generate`: prompts → teacher responses, appended to a JSONL file as they arrive.

The output is its own journal. Each finished response is one line, written whole and flushed to
disk before the next; a line cut short by a crash is trimmed on the next start. Re-running the
same command skips every (prompt id, sample) already in the file, so a run killed at any moment
(SIGKILL, Ctrl-C, the endpoint going down) loses nothing and duplicates nothing.

A sidecar `<output>.meta.json` records the teacher's identity, the prompt template and the
sampling settings; resuming with different ones is refused, so one file never mixes two teachers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from distill.core.errors import CheckpointError, DataError
from distill.core.files import atomic_write_text, make_private_dir, writing
from distill.teachers.text import Completion, Sampling, TeacherUnavailable, TextTeacher


@dataclass(frozen=True)
class PromptRow:
    """One prompt to send: its stable id, the chat messages, and fields carried into the output."""

    id: str
    messages: list[dict[str, str]]
    fields: dict[str, Any]


@dataclass
class GenerateStats:
    prompts: int
    already_done: int  # prompts complete before this run started
    generated: int  # records written by this run
    wall_s: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def requests_per_s(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0


def generate(teacher: TextTeacher, prompts: list[PromptRow], output: Path, *, sampling: Sampling,
             template: str | None = None, concurrency: int = 4, quiet: bool = False) -> GenerateStats:
    """Ask `teacher` for `sampling.n` responses to every prompt not yet in `output`."""
    _check_unique(prompts)
    make_private_dir(output.parent)
    _check_meta(output, {"teacher": teacher.identity, "template": template, "sampling": sampling.as_dict()})
    todo = pending(prompts, output, sampling.n)
    stats = GenerateStats(len(prompts), len(prompts) - len(todo), 0, 0.0, 0, 0)
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), initial=stats.already_done, desc="generate", unit="prompt", disable=quiet)
    finished = stats.already_done
    with writing(output):  # a read-only file or full disk: a clear OutputError, not a traceback
        out = open(output, "a", encoding="utf-8")
    with out:
        try:
            requests = [((p, missing), p.messages) for p, missing in todo]
            for (prompt, missing), completions in ask_all(teacher, requests, sampling, concurrency):
                completions = _checked(completions, sampling, prompt)
                for s in missing:
                    _append(out, _record(prompt, s, completions[s]))
                    stats.generated += 1
                    stats.prompt_tokens += completions[s].prompt_tokens
                    stats.completion_tokens += completions[s].completion_tokens
                finished += 1
                bar.update(1)
        except TeacherUnavailable as exc:
            raise TeacherUnavailable(f"{exc}\nKept {finished} of "
                                     f"{len(prompts)} prompts in {output}; re-run the same command to "
                                     "continue from there.") from exc
        finally:
            bar.close()
            stats.wall_s = time.perf_counter() - start
    return stats


def pending(prompts: list[PromptRow], output: Path, n: int) -> list[tuple[PromptRow, list[int]]]:
    """The prompts with samples not yet in `output`, each with its missing sample numbers."""
    done = completed_keys(output)
    todo = [(p, [s for s in range(n) if (p.id, s) not in done]) for p in prompts]
    return [(p, missing) for p, missing in todo if missing]


def ask_all(teacher: TextTeacher, requests: list[tuple[Any, list[dict[str, str]]]], sampling: Sampling,
            concurrency: int) -> Iterator[tuple[Any, list[Completion]]]:
    """(key, completions) for every (key, messages), in completion order, with at most
    `concurrency` requests in flight; the first failure stops the rest and is raised."""
    pending: dict[Future, Any] = {}
    queue = iter(requests)

    def submit() -> None:
        item = next(queue, None)
        if item is not None:
            pending[pool.submit(teacher.complete, item[1], sampling)] = item[0]

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="teacher")
    try:
        for _ in range(max(1, concurrency)):
            submit()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                yield key, fut.result()
                submit()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _checked(completions: list[Completion], sampling: Sampling, prompt: PromptRow) -> list[Completion]:
    if len(completions) < sampling.n:
        raise TeacherUnavailable(f"The teacher returned {len(completions)} responses to prompt {prompt.id!r}, "
                                 f"asked for n={sampling.n}; lower generate.sampling.n if it caps n.")
    return completions


def _record(prompt: PromptRow, sample: int, c: Completion) -> dict[str, Any]:
    rec = {"id": prompt.id, "sample": sample, **prompt.fields, "messages": prompt.messages,
           "response": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
           "completion_tokens": c.completion_tokens, "latency_s": round(c.latency_s, 4)}
    if c.logprobs is not None:
        rec["logprobs"] = c.logprobs
    return rec


def _append(out: Any, record: dict[str, Any]) -> None:
    """One whole line, on disk before the next is started (a crash cuts at most this line)."""
    with writing(Path(out.name)):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


# --------------------------------------------------------------------------- reading back


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a generated JSONL file (a cut-off last line is ignored)."""
    return list(_complete_lines(path))


def completed_keys(path: Path) -> set[tuple[str, int]]:
    """(id, sample) of every record in `path`, after trimming a last line cut short by a crash."""
    if not path.exists():
        return set()
    _trim_partial_line(path)
    return {(r["id"], r["sample"]) for r in _complete_lines(path)}


def _complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return  # cut short by a crash: not a record
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}, line {n} is not JSON ({exc.msg}); it was not written by "
                                      "`distill generate`, or was edited. Fix or delete that line.") from exc
            if not isinstance(rec, dict) or "id" not in rec or "sample" not in rec:
                raise CheckpointError(f"{path}, line {n} has no `id`/`sample`: not a generated record.")
            yield rec


def _trim_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def _check_meta(output: Path, meta: dict[str, Any]) -> None:
    """Record what generates this file; refuse to add a different teacher's text to it."""
    meta_path = output.with_name(output.name + ".meta.json")
    meta = json.loads(json.dumps(meta))  # tuples → lists, as they read back
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
            raise CheckpointError(f"{output} was generated with a different {' and '.join(diff)} "
                                  f"({meta_path} records {', '.join(f'{k}={old.get(k)!r}' for k in diff)}). "
                                  "Write to a new output file, or delete both files to start over.")
        return
    if output.exists() and output.stat().st_size > 0:
        raise CheckpointError(f"{output} exists but has no {meta_path.name}: it was not started by "
                              "`distill generate`. Choose another output file.")
    atomic_write_text(meta_path, json.dumps({**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))


def _check_unique(prompts: list[PromptRow]) -> None:
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise DataError(f"Prompt id {p.id!r} appears twice; ids must be unique so a resumed run "
                            "knows what is done. Give each row a distinct `id` field.")
        seen.add(p.id)


def stats_dict(stats: GenerateStats) -> dict[str, float]:
    return {**asdict(stats), "requests_per_s": stats.requests_per_s}
