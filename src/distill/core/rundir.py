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

FREE_ON_RESUME = ("quiet", "keep_state", "report_to", "teacher.cache_rebuild")  # what is printed, logged, kept, repaired


def open_run_dir(cfg: BaseModel, resume: bool) -> Path:
    """The run directory of any job's config (classic, lm, textkd: fields `name`, `output_dir`, `device`),
    checked against the config saved there when resuming."""
    run_dir = Path(cfg.output_dir) / cfg.name
    current = cfg.model_dump(mode="json")
    saved = run_dir / "config.yaml"
    request = run_dir / "request.yaml"  # what was asked; config.yaml may be rewritten as what ran
    if saved.is_file() and not resume and not _holds_work(run_dir):
        saved = run_dir / "nothing"  # a start that failed before any training: the corrected command starts over
    if saved.is_file():
        saved = request if request.is_file() else saved
        if not resume:
            raise ConfigError(f"Run directory {run_dir} already exists; pass --resume to continue it, "
                              "or choose another run with name=NEW_NAME (nothing was overwritten).")
        # `quiet`, `keep_state` and `teacher.cache_rebuild` change what is printed, kept or repaired, not
        # what is trained: `--resume` may add or drop them.
        free = FREE_ON_RESUME + getattr(type(cfg), "resume_free", ())
        previous = _without(_with_defaults(yaml.safe_load(saved.read_text()) or {}, type(cfg)), free)
        mine = _without(current, free)
        if previous != mine:
            changed = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
            teacher = run_dir / "teacher" / "model.safetensors"
            reuse = (f" To keep its trained teacher, start a new run with teacher.checkpoint={teacher}."
                     if teacher.is_file() else "")
            raise ConfigError(f"--resume: the config differs from the one saved in {saved} "
                              f"(sections: {', '.join(changed)}); resume with the same config, or start "
                              f"a new run with name=NEW_NAME.{reuse}")
    state = process_state(cfg.device)
    state.wait_for_everyone()  # every process has checked before the main one writes
    if state.is_main_process:
        text = yaml.safe_dump(current, sort_keys=False)
        try:
            make_private_dir(run_dir)  # 0o700: configs, data and weights are the owner's alone
            if not (run_dir / "config.yaml").is_file() or not resume:  # a resumed run keeps the config that ran
                atomic_write_text(run_dir / "config.yaml", text)
            atomic_write_text(request, text)
        except OSError as exc:
            raise ConfigError(f"output_dir: cannot write the run directory {run_dir} ({exc.strerror or exc}); set "
                              "output_dir (or name) to a directory you can write.") from None
    state.wait_for_everyone()
    return run_dir


def _holds_work(run_dir: Path) -> bool:
    """Whether a run directory holds anything trained or measured (weights, checkpoints, a pilot, a report),
    as opposed to the config files of a start that failed before any training."""
    return any(run_dir.rglob("*.safetensors")) or any((run_dir / f).exists() for f in ("pilot.json", "report.json"))


def _without(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `config` without the dotted `keys`."""
    import copy

    out = copy.deepcopy(config)
    for key in keys:
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _with_defaults(raw: dict[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """A saved run config with the defaults of this version filled in (by its own job's schema), so
    that settings added since it was written (at their defaults) do not block `--resume`; as saved if
    it no longer validates."""
    raw = migrate(raw, getattr(schema, "renamed", {}))  # keys renamed since it was saved
    try:
        return schema.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        return raw


def require_finished_run(path: Path, what: str) -> None:
    """Refuse, before writing anything, to export from a run directory whose job has not finished
    (RUN/<stage>/<weights>, RUN holding the job's config but no report.json): its card would have no
    measurements, and its weights may be an interrupted stage's."""
    run = Path(path).parent.parent
    if ((run / "config.yaml").is_file() or (run / "request.yaml").is_file()) and not (run / "report.json").is_file():
        raise ConfigError(f"{what}: {path} belongs to the run {run}, which has not finished (it has no report.json); "
                          f"finish it first (the same command with --resume), then export.")
