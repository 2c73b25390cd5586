"""Which generated responses become training data, and why the others did not.

Reasons a record is dropped, checked in this order (the first that applies is counted):
  empty       the response has no text;
  overlong    generation stopped at `max_tokens` (the answer was cut off);
  unparsable  no "Answer:" marker with a label after it (only when answers are parsed);
  wrong       the answer does not match the gold label (or the user's check said no);
  duplicate   the same response to the same prompt was already kept (several samples per prompt).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distill.core.imports import import_function
from distill.data.prompts import parse_response

REASONS = ("empty", "overlong", "unparsable", "wrong", "duplicate")


@dataclass
class FilterResult:
    kept: list[dict[str, Any]]  # records, each with `rationale` and `answer` added when parsed
    counts: dict[str, int] = field(default_factory=dict)  # "total", "kept" and one per reason

    @property
    def kept_fraction(self) -> float:
        return self.counts["kept"] / self.counts["total"] if self.counts.get("total") else 0.0


def filter_records(records: list[dict[str, Any]], *, labels: list[str] | None = None,
                   label_key: str = "label", parse_answers: bool = True,
                   check: Callable[[dict[str, Any]], bool] | None = None) -> FilterResult:
    """Keep the records a student should learn from; count each drop by its reason."""
    counts = Counter({r: 0 for r in REASONS})
    kept, seen = [], set()
    for rec in records:
        reason, parsed = _verdict(rec, labels, label_key, parse_answers, check)
        if reason is None:
            key = (rec["id"], " ".join(rec["response"].split()).lower())
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is not None:
            counts[reason] += 1
            continue
        kept.append({**rec, **parsed})
    return FilterResult(kept=kept, counts={"total": len(records), "kept": len(kept), **counts})


def _verdict(rec: dict[str, Any], labels: list[str] | None, label_key: str, parse_answers: bool,
             check: Callable[[dict[str, Any]], bool] | None) -> tuple[str | None, dict[str, Any]]:
    text = rec.get("response", "")
    if not text.strip():
        return "empty", {}
    if rec.get("finish_reason") == "length":
        return "overlong", {}
    parsed: dict[str, Any] = {}
    if parse_answers:
        p = parse_response(text, labels)
        if p is None or (labels and p.label is None):
            return "unparsable", {}
        parsed = {"rationale": p.rationale, "answer": p.label or p.answer}
    if check is not None:
        return (None if check({**rec, **parsed}) else "wrong"), parsed
    if parse_answers and label_key in rec and str(parsed["answer"]).lower() != str(rec[label_key]).lower():
        return "wrong", parsed
    return None, parsed


def load_check(spec: str, key: str = "filter.check") -> Callable[[dict[str, Any]], bool]:
    """The user's own `module:function` (record → keep?), imported explicitly by name."""
    return import_function(spec, key)
