"""Evaluation in the loop: teacher and students answer the same eval set through the same
`TextTeacher` interface, and are scored on the task, on their text, and on what they cost.

  accuracy      the parsed answer equals the gold label;
  exact_match   the whole output, normalised, equals the gold label;
  similarity    ROUGE-L F1 (word LCS) between the output and a reference text, when given;
  cost_per_1k   price of 1,000 requests: mean prompt/completion tokens × price per 1M tokens;
  latency       measured per request (p50 and mean), and requests per second over the run.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

from distill.data.prompts import match_label, parse_response
from distill.teachers.generate import ask_all
from distill.teachers.text import Sampling, TextTeacher


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: list[dict[str, str]]
    label: str
    reference: str | None = None  # text to compare the output with (similarity)


@dataclass(frozen=True)
class Prices:
    """Price per 1M tokens (any currency), prompt and completion."""

    prompt: float = 0.0
    completion: float = 0.0


def score(model: TextTeacher, items: list[EvalItem], *, labels: list[str], sampling: Sampling,
          answer_format: str = "answer", prices: Prices = Prices(),
          concurrency: int = 1) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Ask `model` every item; metrics and one row per item (id, label, output, predicted, ...)."""
    rows = []
    start = time.perf_counter()
    one = Sampling(**{**sampling.as_dict(), "n": 1})
    for item, (c, *_) in ask_all(model, [(it, it.messages) for it in items], one, concurrency):
        rows.append({"id": item.id, "label": item.label, "output": c.text, "reference": item.reference,
                     "latency_s": c.latency_s, "prompt_tokens": c.prompt_tokens,
                     "completion_tokens": c.completion_tokens})
    wall = time.perf_counter() - start
    metrics = metrics_of(rows, labels, answer_format, prices)
    metrics["requests_per_s"] = len(rows) / wall if wall > 0 else 0.0
    return metrics, sorted(rows, key=lambda r: r["id"])


def metrics_of(rows: list[dict[str, Any]], labels: list[str], answer_format: str,
               prices: Prices = Prices()) -> dict[str, float]:
    """Scores of answered rows ({label, output, latency_s, prompt_tokens, completion_tokens,
    reference?}); adds `predicted` (and `similarity`) to each row.

    `answer_format` "answer": the label follows an "Answer:" marker (rationale first);
    "label": the output is the label itself.
    """
    for r in rows:
        r["predicted"] = predict(r["output"], labels, answer_format)
        if r.get("reference"):
            r["similarity"] = rouge_l(r["output"], r["reference"])
    n = max(len(rows), 1)
    mean_p = statistics.fmean([r["prompt_tokens"] for r in rows] or [0])
    mean_c = statistics.fmean([r["completion_tokens"] for r in rows] or [0])
    latencies = [r["latency_s"] for r in rows] or [0.0]
    metrics = {
        "accuracy": sum(r["predicted"] == r["label"] for r in rows) / n,
        "exact_match": sum(_norm(r["output"]) == _norm(r["label"]) for r in rows) / n,
        "parsed": sum(r["predicted"] is not None for r in rows) / n,
        "requests": float(len(rows)),
        "prompt_tokens_mean": mean_p,
        "completion_tokens_mean": mean_c,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_mean_ms": 1000 * statistics.fmean(latencies),
        "cost_per_1k": 1000 * (mean_p * prices.prompt + mean_c * prices.completion) / 1e6,
    }
    sims = [r["similarity"] for r in rows if "similarity" in r]
    if sims:
        metrics["similarity"] = statistics.fmean(sims)
    return metrics


def predict(text: str, labels: list[str], answer_format: str) -> str | None:
    """The label an output names, or None."""
    if answer_format == "answer":
        parsed = parse_response(text, labels)
        return parsed.label if parsed else None
    first = text.strip().split("\n")[0] if text.strip() else ""
    return match_label(first, labels)


def retention(student: dict[str, float], teacher: dict[str, float]) -> float:
    """Student accuracy as a fraction of the teacher's (NaN when the teacher scored 0)."""
    return student["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan")


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased words (runs of letters and digits, as the reference `rouge-score`
    tokenises): the longest common subsequence against both lengths."""
    a, b = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip(".").split())
