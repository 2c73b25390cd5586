"""Built-in tasks whose answers a program checks: made on the spot from a seed, no files needed.

  addition   "What is 47 + 85?" answered with the working written out, one column at a time, then
             `Answer: 132` (scored by the regex `ANSWER_PATTERN`). Numbers of 2 to `digits` digits.
             A multi-token answer where one wrong step spoils the rest: the setting in which a student
             that learns from its own attempts (on-policy) should beat one that copies written answers.
"""

from __future__ import annotations

import random

from distill.core.errors import ConfigError
from distill.data.tasks import TaskPrompt

ANSWER_PATTERN = r"answer:\s*(-?\d+)"
TASKS = ("addition",)


def builtin_task(name: str, n: int, seed: int, *, digits: int = 3, offset: int = 0) -> list[TaskPrompt]:
    """`n` prompts of the built-in task `name`; rows `offset`.. of its seeded sequence (ids say which)."""
    if name not in TASKS:
        raise ConfigError(f"data.source=builtin:{name}: no such built-in task; the built-in tasks are "
                          f"{', '.join('builtin:' + t for t in TASKS)}.")
    rng = random.Random(seed)
    rows = []
    for i in range(offset + n):
        a, b = (rng.randint(10, 10 ** rng.randint(2, digits) - 1) for _ in range(2))
        if i >= offset:
            rows.append(TaskPrompt(f"add-{seed}-{i}", [{"role": "user", "content": f"What is {a} + {b}?"}],
                                   reference=addition_working(a, b)))
    return rows


def addition_working(a: int, b: int) -> str:
    """Column addition from the right, e.g. 47 + 85: "7+5=12, write 2 carry 1. 4+8+1=13, write 13.
    Answer: 132"."""
    steps, carry = [], 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        last = i == max(len(xs), len(ys)) - 1
        if last:
            steps.append(f"{terms}={total}, write {total}.")
        else:
            carry = total // 10
            steps.append(f"{terms}={total}, write {total % 10}" + (f" carry {carry}." if carry else "."))
    return " ".join(steps) + f" Answer: {a + b}"
