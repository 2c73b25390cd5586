"""Smoke budgets: for each job, the overrides that run every one of its stages (teacher, pilot, baseline,
distillation, evaluation, speed, report; caches, generation and servers where the job has them) in
under two minutes on two CPU cores, so a config can be tried before its real budget is spent.

`--smoke` puts them between the config file and the command line's own overrides (what you type still
wins), and names the run `<name>-smoke` so a real run's directory is never reused by one. Its numbers
say only that every stage ran: the budgets are far too small for a verdict. `DISTILL_SMOKE=1` in the
environment does the same for every job command of a script, keeping the names it gives, so a script
whose later commands read an earlier run's files (runs/NAME/...) can be tried whole in minutes.
"""

from __future__ import annotations

import os
from typing import Any, Callable

_CLASSIFIER = ["data.limit=2000", "teacher.train.steps=40", "train.steps=60", "bench.repeats=3"]
_LM_FINETUNE = ["teacher.finetune.steps=4", "teacher.finetune.eval_every=4", "teacher.finetune.save_every=4",
                "teacher.finetune.warmup_steps=1", "train.steps=4", "train.eval_every=4", "train.save_every=4",
                "train.warmup_steps=1"]
_LM_DATA = ["teacher.adapt.steps=4", "data.max_blocks=32", "data.val_fraction=0.25", "data.val_blocks=8"]
SMOKE: dict[str, list[str]] = {
    "run": _CLASSIFIER,
    "train-teacher": _CLASSIFIER,
    "prune": _CLASSIFIER,
    "quantize": _CLASSIFIER,
    "lm": [*_LM_DATA, "train.steps=8", "train.eval_every=4", "train.save_every=4", "train.warmup_steps=1",
           "on_policy.max_new_tokens=8"],
    "lm-cache": _LM_DATA,  # the cache is the adapted teacher's
    "textkd": ["data.train_examples=8", "data.eval_examples=8", "data.unlabeled_examples=8", *_LM_FINETUNE],
    "generate": ["data.train_examples=8", "data.eval_examples=8", "data.unlabeled_examples=8"],
    "task": ["data.train_examples=8", "data.eval_examples=8", "data.answered=null", "on_policy.max_new_tokens=16",
             *_LM_FINETUNE],
    "search": ["trials=2"],  # and every candidate's run gets the `run` budget (see `search_smoke`)
}


def smoke_overrides(job: str, overrides: list[str], config: Any = None) -> list[str]:
    """The job's smoke budget, then the given overrides (which win). With the `config` the job would
    run without it, a budget inside a section that config leaves off (`teacher.adapt: null`) is
    dropped: a smoke run has the stages of the real one, no more."""
    return [*(o for o in SMOKE[job] if config is None or _section_on(config, o.split("=", 1)[0])), *overrides]


def _section_on(config: Any, key: str) -> bool:
    node = config
    for part in key.split(".")[:-1]:
        node = getattr(node, part, None)
        if node is None:
            return False
    return True


def smoke_name(name: str) -> str:
    return name if name.endswith("-smoke") else f"{name}-smoke"


def search_smoke(base_overrides: list[str]) -> list[str]:
    """A search's per-candidate overrides under --smoke: its own, then the classifier smoke budget."""
    return [*base_overrides, *SMOKE["run"]]


def smoke_requested(command: str, flag: bool) -> bool:
    """--smoke, or DISTILL_SMOKE=1 (every job command of a script on its smoke budget, under its own name)."""
    return command in SMOKE and (flag or os.environ.get("DISTILL_SMOKE") == "1")


def smoke_config(command: str, load: Callable[[list[str]], Any], overrides: list[str], rename: bool) -> Any:
    """The job's config on its smoke budget (`load` reads the config file with the given overrides); with
    `rename` (--smoke), its run named NAME-smoke unless the overrides name it."""
    cfg = load(smoke_overrides(command, overrides, load(overrides)))
    if not rename or any(o.startswith("name=") for o in overrides):
        return cfg
    return cfg.model_copy(update={"name": smoke_name(cfg.name)})
