"""Budgets nobody gave: a classifier's default budget (10 epochs, at least 1,000 steps) grows when
validation accuracy was still rising as its learning rate decayed.

A fixed default is too short for some data and generous for the rest: on stdlib docstrings a
bag-of-words student reached 43% after the default 1,000 steps and 78% after 4,000, where 8×8 digits
had long converged (benchmarks/defaults_robustness.py). So when neither `epochs` nor `steps` is given,
the run continues — the same run resumed from its last checkpoint, its cosine schedule stretched to
the new end — to `PATIENCE` times its steps when it was still learning as its learning rate decayed:
the validation row at two thirds of the run above the row at one third by more than one standard
error (`learning`; the last third itself says little, as the decayed rate flattens every curve
there). One jump rather than doubling twice: stretching the schedule twice leaves about half the
learning-rate area of one stretch (docstrings, seed 0: 66.4% against 75.7%; a fresh 4,000-step run,
78.4%, would waste the first run). A budget the user gave is never changed; a run still rising at
the end of the grown budget says so (`still_improving`); a run stopped after it grew continues to the
grown budget when resumed (its rows past the default say it grew).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from distill.training.config import TrainConfig
from distill.training.engine import FitResult

PATIENCE = 4  # a default budget that is still learning grows to this many times itself


def grows(config: TrainConfig, n_val: int) -> bool:
    """Whether a run of `config` may extend its budget: none was given, and there is validation data."""
    return config.epochs is None and config.steps is None and n_val > 0


def fit_patiently(fit_to: Callable[[int, bool], FitResult], steps: int, *, grow: bool, n_val: int, name: str,
                  resume: bool = False) -> tuple[FitResult, list[str], list[str]]:
    """`fit_to(steps, resume)` (a run checkpointing where a resumed call continues it), then, with `grow`
    and while it was still `learning` (or had grown before it was stopped), the same run continued to
    `PATIENCE` times `steps`. Returns the result, notes (how far the budget grew and why) and warnings
    (a larger budget would likely help)."""
    out, notes, total = fit_to(steps, resume), [], steps
    grown = any(r.get("step", 0) > steps for r in out.history)  # a resumed run had grown: it goes on growing
    if grow and (grown or learning(out.history, n_val)):
        total = PATIENCE * steps
        out = fit_to(total, True)
    if total > steps:
        notes.append(f"{name}: trained {total} steps instead of the default {steps}: validation accuracy was still "
                     "rising as the default budget's learning rate decayed (give steps= or epochs= to fix the budget).")
    return out, notes, still_improving(out.history, n_val, name)


def learning(history: list[dict[str, float]], n_val: int) -> bool:
    """Whether validation accuracy rose by more than one standard error from the row at one third of the
    run to the row at two thirds (over `n_val` examples)."""
    rows = [r for r in history if "val_accuracy" in r]
    return len(rows) >= 3 and _rose(rows[len(rows) // 3 - 1 if len(rows) >= 6 else 0], rows[(2 * len(rows)) // 3 - 1],
                                    n_val)


def still_improving(history: list[dict[str, float]], n_val: int, name: str) -> list[str]:
    """A note when validation accuracy was still rising at the end: the last row above the row at two
    thirds of the run by more than one standard error (a longer budget would likely help)."""
    rows = [r for r in history if "val_accuracy" in r]
    if len(rows) < 3 or not _rose(earlier := rows[(2 * len(rows)) // 3 - 1], last := rows[-1], n_val):
        return []
    return [f"{name}: validation accuracy was still rising at the end ({100 * earlier['val_accuracy']:.1f}% at step "
            f"{earlier['step']}, {100 * last['val_accuracy']:.1f}% at step {last['step']}): a larger budget (steps=) "
            "would likely help."]


def _rose(earlier: dict[str, float], later: dict[str, float], n_val: int) -> bool:
    """Whether `later`'s validation accuracy p is above `earlier`'s by more than sqrt(p(1 − p) / n_val)."""
    p = later["val_accuracy"]
    return n_val > 0 and p - earlier["val_accuracy"] > math.sqrt(p * (1 - p) / n_val)
