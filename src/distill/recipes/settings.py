"""Every setting of a job, read from its schema so that it cannot drift: dotted key, type (with its
bounds), the value the job would run with, and the field's one-line meaning (`distill config JOB`).

Lists of sections (a classifier's `losses`, a search's candidates) are walked as `key[].field`; a
section that is off (`teacher.finetune: null`) still lists its keys, with the schema's defaults it
would take when given.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from distill.core.errors import ConfigError

JOBS = ("run", "lm", "textkd", "task", "search")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted, as in key=value overrides
    type: str  # e.g. "int ≥ 1", "forward_kl | reverse_kl", "float | null"
    value: Any  # what the job runs with; for a section that is off, the schema's default
    meaning: str  # the field's description ("" when the schema has none)
    active: bool = True  # False: inside a section that is off


def job_config(job: str, source: str | None, overrides: list[str]) -> BaseModel:
    """The resolved config of `job` (its built-in one when `source` is None), overrides applied."""
    if job == "run":
        from distill.recipes.classify.config import load_config as load
    elif job == "lm":
        from distill.recipes.lm.config import load_lm_config as load
    elif job == "textkd":
        from distill.recipes.textkd.config import load_textkd_config as load
    elif job == "task":
        from distill.recipes.task.config import load_task_config as load
    elif job == "search":
        if source is None:
            raise ConfigError("distill config search needs a search config (e.g. configs/search_fmnist.yaml): "
                              "a search has no built-in job.")
        from distill.recipes.search import load_search_config as load
    else:
        raise ConfigError(f"no job {job!r}: distill config takes one of {', '.join(JOBS)}")
    return load(source, overrides)


def settings(config: BaseModel) -> list[Setting]:
    """Every leaf key of `config`'s schema, in declaration order, with the value `config` holds."""
    return list(_walk(type(config), config, "", True))


def _walk(schema: type[BaseModel], value: BaseModel | None, prefix: str, active: bool) -> typing.Iterator[Setting]:
    for name, field in schema.model_fields.items():
        key = prefix + name
        if value is not None:
            current = getattr(value, name)
        else:
            current = "required" if field.is_required() else field.get_default(call_default_factory=True)
        section, listed = _section(field.annotation)
        if section is not None and not listed:
            on = isinstance(current, BaseModel)
            if not on:  # off (null): its keys with the defaults they take when the section is given
                yield Setting(key, "section | null", None, field.description or "", active)
            yield from _walk(section, current if on else None, key + ".", active and on)
        elif section is not None:  # a list of sections
            yield Setting(key, "list of sections", [_dump(v) for v in current or []], field.description or "", active)
            yield from _walk(section, None, key + "[].", False)
        else:
            yield Setting(key, type_name(field.annotation, field.metadata), _dump(current), field.description or "",
                          active)


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The schema a field holds (alone, optional, or as a list's items) and whether it is a list."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if typing.get_origin(arg) is list:
            inner = typing.get_args(arg)
            if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
                return inner[0], True
    return None, False


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A readable type: `int ≥ 1`, `float | null`, `a | b | c` for a choice, `list[int]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        text = " | ".join(str(a) for a in args)
    elif origin in (typing.Union, types.UnionType):
        text = " | ".join("null" if a is type(None) else type_name(a) for a in args)
    elif origin is not None:
        text = f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    bounds = [f"{sign} {getattr(m, attr)}" for m in metadata or [] for attr, sign in
              (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if getattr(m, attr, None) is not None]
    return " ".join([text, *bounds]) if not bounds else f"{text} {', '.join(bounds)}"


def _dump(value: Any) -> Any:
    """A value as YAML/JSON writes it (paths as text)."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)


def render(rows: list[Setting], job: str) -> str:
    """Plain text, one key a paragraph: `key = value  [type]`, its meaning wrapped under it."""
    import json
    import textwrap

    lines = [f"distill {job}: {len(rows)} settings, as key=value overrides (a YAML config nests the same keys)."
             " Values are what this config runs with.", ""]
    for r in rows:
        value = r.value if isinstance(r.value, str) else json.dumps(r.value)
        if not r.active:
            value = f"{value} when the section is set"
        lines.append(f"{r.key} = {value}  [{r.type}]")
        if r.meaning:
            lines += textwrap.wrap(r.meaning, 100, initial_indent=" " * 4, subsequent_indent=" " * 4)
    return "\n".join(lines)
