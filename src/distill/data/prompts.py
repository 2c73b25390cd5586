"""Prompt templates and answer parsing.

A template is a Python format string over the fields of a data row (`{text}`, `{label}`, ...).
A missing field is an error naming the field, the row and the config key before any request
is sent. Teacher responses are parsed into (rationale, answer) by the last `Answer:` marker.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from distill.core.errors import ConfigError

ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
REASON_PREFIX = re.compile(r"^\s*(reason|rationale|explanation)\s*:\s*", re.IGNORECASE)


def template_fields(template: str) -> list[str]:
    """The named fields a format string uses, in order."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise ConfigError(f"The prompt template is not a valid format string ({exc}); "
                          "write fields as {text} and literal braces as {{ and }}.") from exc


def render(template: str, row: dict[str, Any], where: str, key: str = "generate.template") -> str:
    """`template` filled from `row`; a missing field names the row and the key to fix."""
    missing = [f for f in template_fields(template) if f not in row]
    if missing:
        raise ConfigError(f"{key} uses {{{missing[0]}}}, but {where} has no field `{missing[0]}` "
                          f"(it has: {', '.join(sorted(row))}). Fix the template or the data.")
    return template.format(**row)


@dataclass(frozen=True)
class Parsed:
    rationale: str
    answer: str  # the raw text after the marker, first line, stripped
    label: str | None  # the answer mapped onto the label set, or None when it names none


def parse_response(text: str, labels: list[str] | None = None) -> Parsed | None:
    """Split `text` at its last "Answer:"; None when there is no marker or no answer after it."""
    marks = list(ANSWER_MARKER.finditer(text))
    if not marks:
        return None
    last = marks[-1]
    answer = text[last.end():].strip().split("\n")[0].strip().strip(".").strip()
    if not answer:
        return None
    rationale = REASON_PREFIX.sub("", text[: last.start()].strip()).strip()
    return Parsed(rationale=rationale, answer=answer, label=match_label(answer, labels) if labels else None)


def match_label(answer: str, labels: list[str]) -> str | None:
    """The label `answer` names: exact, else the one label whose stem starts a word of it."""
    norm = answer.lower().strip(" .\"'")
    by_lower = {label.lower(): label for label in labels}
    if norm in by_lower:
        return by_lower[norm]
    words = re.findall(r"[a-z0-9]+", norm)
    hits = {label for label in labels for w in words if _stem(w) == _stem(label.lower())}
    return hits.pop() if len(hits) == 1 else None


def _stem(word: str) -> str:
    """Crude plural folding ("sports" = "sport") and a 4-letter prefix ("technology" = "tech")."""
    return word.rstrip("s")[:4]
