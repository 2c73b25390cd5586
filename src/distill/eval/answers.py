"""`distill monitor --recorded`: a served student's live answers against a teacher's recorded ones.

    distill monitor --recorded finetune.jsonl --endpoint http://127.0.0.1:8000/v1 --min-f1 0.5

The recorded file is an OpenAI chat fine-tuning JSONL (or stored completions exported to it): each
row's conversation up to its last assistant message is sent to the endpoint (greedy), and the
answer is compared with that message, the teacher's. Per window of answers: the share that match
exactly (after normalising case and spaces) and the mean word-overlap F1 (SQuAD's answer metric);
a window alerts below `--min-f1`, and the command exits 3 if any did, like the classifier monitor.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from distill.core.errors import ConfigError, DataError
from distill.eval.monitor import EXIT_ALERT, EXIT_OK, sample


@dataclass
class AnswerWindow:
    window: int
    n: int
    exact: float  # share of answers equal to the recorded one (case and spaces normalised)
    f1: float  # mean word-overlap F1 with the recorded answer
    length_ratio: float  # mean words(answer) / words(recorded)
    alert: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def row(self) -> str:
        status = "ALERT: " + "; ".join(self.reasons) if self.alert else "ok"
        return f"{self.window:>6} {self.n:>6} {self.exact:>8.1%} {self.f1:>7.3f} {self.length_ratio:>7.2f}  {status}"


def recorded_pairs(path: Path) -> Iterator[tuple[list[dict[str, str]], str]]:
    """(conversation before the last assistant message, that message) of each row of `path`."""
    from distill.data.tokens import ROLES, chat_problem, message_text, read_jsonl

    for n, row in enumerate(read_jsonl(path), 1):
        problem = chat_problem(row) if "messages" in row else "a recorded row needs `messages`"
        if problem:
            raise DataError(f"{path}, row {n}: {problem}.")
        messages = row["messages"]
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(f"{path}, row {n}: the conversation must end with the teacher's (assistant) "
                            "answer, after at least one message.")
        yield ([{"role": ROLES[m["role"]], "content": message_text(m["content"])} for m in messages[:-1]],
               message_text(messages[-1]["content"]))


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's F1 between the words of `answer` and `reference` (1.0 when both are empty)."""
    a, r = words(answer), words(reference)
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def answer_windows(client: Any, pairs: Iterable[tuple[list[dict[str, str]], str]], *, window: int,
                   min_f1: float, max_tokens: int) -> Iterator[AnswerWindow]:
    """Ask `client` (a `distill.teachers.remote.OpenAITeacher`) each conversation; one window per `window` answers."""
    from distill.teachers.text import Sampling

    rows: list[tuple[float, float, float]] = []
    index = 1  # windows are numbered from 1, as distill monitor prints them
    for messages, recorded in pairs:
        answer = client.complete(messages, Sampling(max_tokens=max_tokens, temperature=0.0))[0].text
        exact = float(" ".join(words(answer)) == " ".join(words(recorded)))
        rows.append((exact, token_f1(answer, recorded), len(words(answer)) / max(len(words(recorded)), 1)))
        if len(rows) == window:
            yield _stats(index, rows, min_f1)
            rows, index = [], index + 1
    if rows:
        yield _stats(index, rows, min_f1)


def _stats(index: int, rows: list[tuple[float, float, float]], min_f1: float) -> AnswerWindow:
    n = len(rows)
    exact, f1, ratio = (sum(r[i] for r in rows) / n for i in range(3))
    reasons = [f"f1 {f1:.3f} < {min_f1}"] if f1 < min_f1 else []
    return AnswerWindow(index, n, round(exact, 6), round(f1, 6), round(ratio, 4), bool(reasons), reasons)


def run_answer_monitor(client: Any, path: Path, *, sample_fraction: float, window: int, min_f1: float,
                       max_tokens: int = 256, seed: int = 0, as_json: bool = False,
                       out: TextIO | None = None) -> int:
    """Print one line per window (JSON with `as_json`); 3 if any window alerted, else 0."""
    if not 0 < sample_fraction <= 1 or window < 1 or not 0 <= min_f1 <= 1:
        raise ConfigError("--sample must be in (0, 1], --window ≥ 1 and --min-f1 in [0, 1].")
    out = out or sys.stdout
    alerts = n_windows = 0
    pairs = list(recorded_pairs(path))  # the whole file is checked before the first request
    for stats in answer_windows(client, sample(pairs, sample_fraction, seed), window=window, min_f1=min_f1,
                                max_tokens=max_tokens):
        if n_windows == 0 and not as_json:
            print(f"{'window':>6} {'n':>6} {'exact':>8} {'F1':>7} {'length':>7}  status", file=out)
        print(stats.to_json() if as_json else stats.row(), file=out, flush=True)
        n_windows, alerts = n_windows + 1, alerts + stats.alert
    print(f"monitor: {n_windows} window(s) of answers compared with {path}, {alerts} alerted", file=sys.stderr)
    return EXIT_ALERT if alerts else EXIT_OK


def monitor_endpoint(endpoint: str, model: str | None, path: Path, **options: Any) -> int:
    """`run_answer_monitor` against an OpenAI-compatible `endpoint` (its first model when `model` is None;
    the key, if the server needs one, from OPENAI_API_KEY)."""
    from distill.teachers.remote import OpenAITeacher, served_model

    client = OpenAITeacher(base_url=endpoint, model=model or served_model(endpoint))
    return run_answer_monitor(client, path, **options)
