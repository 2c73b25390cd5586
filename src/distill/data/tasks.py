"""Prompt datasets: the task a student learns to do, as chat prompts without the assistant's turn.

    rows = read_task_prompts("train.jsonl", key="data.path")     # -> list[TaskPrompt]

A row is one of
  {"messages": [{"role": "user", "content": "..."}, ...]}            a prompt (any system/user turns);
  the same ending in an assistant message                            its content is the reference answer
                                                                     (an OpenAI chat fine-tuning file is this);
  {"prompt": "...", "answer": "..."}                                  one user turn; `answer` (or `reference`,
                                                                     `response`) optional;
with an optional `id` and an optional `context`: text only the teacher reads (privileged context: a
long system prompt, instructions, examples, a document), put before the prompt's first user turn as a
system message (`teacher_messages`). Sources: JSONL files, and anything `datasets` opens (a saved
dataset directory, a data file, a hub id) with the same columns. Rows with tool calls, images or
other non-text content are refused, naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import DataError
from distill.data.tokens import (
    ROLES,
    PromptBlocks,
    chat_ids,
    chat_problem,
    common_prefix,
    id_tensor,
    message_text,
    special_id,
)

REFERENCE_KEYS = ("answer", "reference", "response")


@dataclass(frozen=True)
class TaskPrompt:
    id: str
    messages: list[dict[str, str]]  # the prompt: system/user (and earlier assistant) turns, ending in a user turn
    reference: str | None = None  # a correct answer, when the data has one
    context: str | None = None  # what only the teacher reads

    def teacher_messages(self) -> list[dict[str, str]]:
        """The prompt as the teacher reads it: the privileged context as a system message in front
        (joined to the prompt's own system message, when it has one)."""
        if not self.context:
            return self.messages
        first = self.messages[0]
        if first["role"] == "system":
            return [{"role": "system", "content": f"{self.context}\n\n{first['content']}"}, *self.messages[1:]]
        return [{"role": "system", "content": self.context}, *self.messages]


def read_task_prompts(source: str | Path, *, key: str, limit: int | None = None) -> list[TaskPrompt]:
    """Every row of a JSONL file or a `datasets` source (its train split), checked; `limit` keeps the first N."""
    path = Path(source)
    if path.suffix.lower() == ".jsonl":
        from distill.data.corpora import json_objects

        if not path.is_file():
            raise DataError(f"`{key}`: {path} does not exist.")
        numbered = [(f"{key}: {path}, line {n}", row) for n, row in json_objects(path)]
    else:
        from distill.data.hf_datasets import open_dataset

        numbered = [(f"{key}: {source}, row {n}", row) for n, row in enumerate(open_dataset(str(source))["train"], 1)]
    numbered = numbered[:limit] if limit else numbered
    rows = [task_prompt(row, where, n) for n, (where, row) in enumerate(numbered, 1)]
    if not rows:
        raise DataError(f"{key}: {source} has no rows.")
    seen: dict[str, str] = {}
    for (where, _), row in zip(numbered, rows):
        if row.id in seen:
            raise DataError(f"{where}: the id {row.id!r} is also the id of {seen[row.id].rsplit(', ', 1)[-1]}; "
                            "ids name a row in the caches and reports, so each must be unique.")
        seen[row.id] = where
    return rows


def task_prompt(row: Any, where: str, n: int) -> TaskPrompt:
    """One row as a `TaskPrompt`, or a `DataError` saying what is wrong with it and how to fix it."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with `messages` or `prompt`, got {type(row).__name__}.")
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError(f"{where}: `context` must be text, not {type(context).__name__}.")
    row_id = row.get("id", n)
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
        raise DataError(f"{where}: `id` must be a string or an integer, not {row_id!r:.40}.")
    if "messages" in row:
        messages, reference = _chat_prompt(row, where)
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages, reference = [{"role": "user", "content": row["prompt"]}], _reference(row, where)
    else:
        raise DataError(f"{where}: a prompt row needs `messages` (chat turns) or a non-empty string `prompt`; "
                        f"it has keys {sorted(row)}.")
    return TaskPrompt(str(row_id), messages, reference, context or None)


def _chat_prompt(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], str | None]:
    problem = chat_problem(row)
    if problem:
        raise DataError(f"{where}: {problem}.")
    messages = [{"role": ROLES[m["role"]], "content": message_text(m["content"]) or ""} for m in row["messages"]]
    reference = _reference(row, where)
    if messages[-1]["role"] == "assistant":
        if reference is not None:
            raise DataError(f"{where}: the answer is given twice (the last assistant message and "
                            f"`{next(k for k in REFERENCE_KEYS if k in row)}`); keep one.")
        reference = messages.pop()["content"]
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user message (the student answers it); it ends "
                        f"with {messages[-1]['role'] if messages else 'nothing'}.")
    return messages, reference


def _reference(row: dict[str, Any], where: str) -> str | None:
    given = [k for k in REFERENCE_KEYS if row.get(k) is not None]
    if len(given) > 1:
        raise DataError(f"{where}: both `{given[0]}` and `{given[1]}` give the answer; keep one.")
    if not given:
        return None
    value = row[given[0]]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"{where}: `{given[0]}` must be text, not {type(value).__name__}.")
    return str(value)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` and the opening of the assistant's turn, by the tokenizer's chat template
    (without one: the turns' text, one per line)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, messages, add_generation_prompt=True)
    return tokenizer("\n".join(m["content"] for m in messages), add_special_tokens=False)["input_ids"]


def encode_prompts(rows: list[TaskPrompt], tokenizer: Any, seq_len: int, *, source: str,
                   responses: list[str | None] | None = None) -> PromptBlocks:
    """One block per row: its prompt (the student's: without the context) and, where `responses`
    gives one, that response as the assistant's turn, the only tokens trained on; `prompt_len` says
    where each prompt ends. A row longer than `seq_len` is an error naming it (nothing is cut)."""
    responses = responses if responses is not None else [None] * len(rows)
    pad = special_id(tokenizer, "pad")
    n = len(rows)
    input_ids = torch.full((n, seq_len), pad, dtype=torch.int64)
    attention = torch.zeros((n, seq_len), dtype=torch.bool)
    loss = torch.zeros((n, seq_len), dtype=torch.bool)
    lengths = torch.zeros(n, dtype=torch.int64)
    for i, (row, response) in enumerate(zip(rows, responses)):
        where = f"{source}, row {row.id!r}"
        prompt = prompt_ids(tokenizer, row.messages)
        ids = prompt if response is None else _with_response(tokenizer, row.messages, prompt, response)
        if len(prompt) >= seq_len or len(ids) > seq_len:
            what = f"its prompt is {len(prompt)} tokens" if len(prompt) >= seq_len else f"prompt + answer is {len(ids)} tokens"
            raise DataError(f"{where}: {what}, more than the student's context (student.seq_len={seq_len}) holds; "
                            "raise student.seq_len, or shorten or drop the row.")
        input_ids[i, : len(ids)] = id_tensor(ids, where)
        attention[i, : len(ids)] = True
        loss[i, len(prompt) - 1: len(ids) - 1] = True  # position t predicts token t + 1: the answer's tokens
        lengths[i] = len(prompt)
    return PromptBlocks(input_ids, attention, loss, prompt_len=lengths)


def _with_response(tokenizer: Any, messages: list[dict[str, str]], prompt: list[int], response: str) -> list[int]:
    """The prompt's ids followed by the response's as the chat template writes the assistant's turn, up
    to the EOS that closes it (included, so the student learns to stop; what a template adds after it
    is not an answer)."""
    eos = special_id(tokenizer, "eos")
    if not getattr(tokenizer, "chat_template", None):
        return prompt + tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
    full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": response}], add_generation_prompt=False)
    answer = full[len(prompt):] if full[: len(prompt)] == prompt else full[common_prefix(prompt, full):]
    return prompt + (answer[: answer.index(eos) + 1] if eos in answer else answer)
