"""Task success: does an answer do the task? Scored against the prompt row's reference answer.

    score = TaskScore("regex", pattern=r"answer: (\\S+)")
    score(row, "... answer: 42")            # -> 1.0 when the reference's answer is 42 too

  exact   the whole output equals the reference after normalisation (case, surrounding whitespace and
          a final full stop ignored, inner whitespace collapsed);
  regex   the answer `pattern` extracts from the output (its last match; group 1 when it has groups)
          equals the one it extracts from the reference (or the whole reference when it does not match);
  check   the user's `module:function(row, output) -> bool`, given the row as a dict (id, messages,
          reference, context);
  rouge   ROUGE-L F1 of the output against the reference (free text: a score in [0, 1], not right/wrong).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from distill.core.errors import ConfigError, DataError
from distill.core.imports import import_function
from distill.data.tasks import TaskPrompt
from distill.eval.text import rouge_l

ScoreKind = Literal["exact", "regex", "check", "rouge"]


@dataclass(frozen=True)
class TaskScore:
    kind: ScoreKind = "exact"
    pattern: str | None = None  # regex
    check: str | None = None  # check: "module:function"
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "regex":
            if not self.pattern:
                raise ConfigError("task.score=regex needs task.pattern, e.g. 'answer: (\\S+)'.")
            try:
                object.__setattr__(self, "_compiled", re.compile(self.pattern, re.IGNORECASE))
            except re.error as exc:
                raise ConfigError(f"task.pattern={self.pattern!r} is not a valid regular expression ({exc}).") from None
        if self.kind == "check":
            if not self.check:
                raise ConfigError("task.score=check needs task.check, e.g. my_module:is_right.")
            object.__setattr__(self, "_fn", import_function(self.check, "task.check"))

    @property
    def needs_reference(self) -> bool:
        return self.kind != "check"

    def __call__(self, row: TaskPrompt, output: str) -> float:
        if self.kind == "check":
            return self._checked(row, output)
        if row.reference is None:
            raise DataError(f"prompt row {row.id!r} has no reference answer, which task.score={self.kind} compares "
                            "with; give the row an answer, or score with task.score=check.")
        if self.kind == "rouge":
            return rouge_l(output, row.reference)
        if self.kind == "regex":
            return float(normalise(self.answer(output) or "") == normalise(self.answer(row.reference) or row.reference))
        return float(normalise(output) == normalise(row.reference))

    def answer(self, text: str) -> str | None:
        """The answer `pattern` extracts from `text`: its last match (group 1 when it has groups)."""
        matches = list(self._compiled.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if last.re.groups else last.group(0)

    def _checked(self, row: TaskPrompt, output: str) -> float:
        try:
            verdict = self._fn({"id": row.id, "messages": row.messages, "reference": row.reference,
                                "context": row.context}, output)
        except Exception as exc:  # the user's code: any failure is theirs to see, with the row it failed on
            raise DataError(f"task.check={self.check} raised {type(exc).__name__} on prompt row {row.id!r}: {exc}. "
                            "Fix the function (it gets the row as a dict and the output text).") from exc
        if not isinstance(verdict, bool):
            raise DataError(f"task.check={self.check} returned {verdict!r} ({type(verdict).__name__}) on prompt row "
                            f"{row.id!r}; it must return True or False.")
        return float(verdict)


def normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def answer_greedily(model: Any, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int,
                    batch_size: int = 16) -> list[str]:
    """A model in this process answers every prompt (token ids) greedily, `batch_size` at a time."""
    from distill.models.generation import GenerationParams, eos_ids_of, generate_batch

    eos = eos_ids_of(model, tokenizer)
    params = GenerationParams(max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        done = generate_batch(model, chunk, [params] * len(chunk), pad_id=tokenizer.pad_token_id, eos_ids=eos)
        out += [tokenizer.decode(g.token_ids, skip_special_tokens=True) for g in done]
    model.train(was_training)
    return out
