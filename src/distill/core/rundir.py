"""The run directory of any job: created once the config and models are checked, and on `--resume`
checked against the config saved there (filled with this version's defaults by its own schema).

`request.yaml` is the config as asked; `config.yaml` starts as the same and a job may rewrite it as the
config that ran (open settings resolved, e.g. by `distill run`'s pilot). `--resume` compares against
the request (run directories from before it: against config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from distill.core.config import migrate
from distill.core.distributed import process_state
from distill.core.errors import ConfigError
from distill.core.files import atomic_write_text, make_private_dir

FREE_ON_RESUME = ("quiet", "keep_state")


def open_run_dir(cfg: BaseModel, resume: bool) -> Path:
    """The run directory of any job's config (classic, lm, textkd: fields `name`, `output_dir`, `device`),
    checked against the config saved there when resuming."""
    run_dir = Path(cfg.output_dir) / cfg.name
    current = cfg.model_dump(mode="json")
    saved = run_dir / "config.yaml"
    request = run_dir / "request.yaml"  # what was asked; config.yaml may be rewritten as what ran
    if saved.is_file():
        saved = request if request.is_file() else saved
        if not resume:
            raise ConfigError(f"Run directory {run_dir} already exists; pass --resume to continue it, "
                              "or choose another run with name=NEW_NAME (nothing was overwritten).")
        # `quiet` and `keep_state` change what is printed and kept, not what is trained: `--resume` may
        # add or drop them.
        previous = _with_defaults(yaml.safe_load(saved.read_text()) or {}, type(cfg))
        free = dict.fromkeys(FREE_ON_RESUME)
        if {**previous, **free} != {**current, **free}:
            changed = sorted(k for k in set(previous) | set(current)
                             if k not in free and previous.get(k) != current.get(k))
            teacher = run_dir / "teacher" / "model.safetensors"
            reuse = (f" To keep its trained teacher, start a new run with teacher.checkpoint={teacher}."
                     if teacher.is_file() else "")
            raise ConfigError(f"--resume: the config differs from the one saved in {saved} "
                              f"(sections: {', '.join(changed)}); resume with the same config, or start "
                              f"a new run with name=NEW_NAME.{reuse}")
    state = process_state(cfg.device)
    state.wait_for_everyone()  # every process has checked before the main one writes
    if state.is_main_process:
        make_private_dir(run_dir)  # 0o700: configs, data and weights are the owner's alone
        text = yaml.safe_dump(current, sort_keys=False)
        if not (run_dir / "config.yaml").is_file():  # a resumed run keeps the config that ran
            atomic_write_text(run_dir / "config.yaml", text)
        atomic_write_text(request, text)
    state.wait_for_everyone()
    return run_dir


def _with_defaults(raw: dict[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """A saved run config with the defaults of this version filled in (by its own job's schema), so
    that settings added since it was written (at their defaults) do not block `--resume`; as saved if
    it no longer validates."""
    raw = migrate(raw, getattr(schema, "renamed", {}))  # keys renamed since it was saved
    try:
        return schema.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        return raw
