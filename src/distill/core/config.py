"""Typed, validated run configuration: the single source of YAML keys and CLI overrides.

Everything is checked before any compute is spent: unknown keys (with the nearest valid name),
wrong types, and files that do not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.core.errors import ConfigError, did_you_mean


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


_Model = TypeVar("_Model", bound=BaseModel)


class RunHeader(Strict):
    """What every job's config begins with: its name, where its run directory goes, what it runs on."""

    name: str = Field(..., description="The run directory's name under output_dir.")
    output_dir: Path = Field(Path("runs"), description="Where run directories go (output_dir/name).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU when there is one (under "
                                                   "torchrun, each process's own), else the CPU.")
    quiet: bool = Field(False, description="Print no progress (a resumed run may change it).")
    keep_state: bool = Field(False, description="Keep each finished stage's resumable training state "
                             "(last.safetensors, best.safetensors); by default a finished stage keeps only its "
                             "weights and metrics (a resumed run may change it).")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list, description=(
        "Log every training stage's metrics and settings: tensorboard (RUN/tracking/STAGE), mlflow "
        "(MLFLOW_TRACKING_URI, else RUN/tracking/mlflow.db), wandb (WANDB_MODE=offline: files under "
        "RUN/tracking/wandb). A resumed run may change it."))

    # Keys renamed since configs were first written (old dotted key → new; `*` is any list index): a
    # config that uses an old name is refused naming the new one, a run directory saved with it resumes.
    renamed: ClassVar[dict[str, str]] = {}
    # Dotted keys `--resume` may change besides quiet and keep_state (e.g. a classifier job's budget).
    resume_free: ClassVar[tuple[str, ...]] = ()


class Schedule(Strict):
    """A value that moves from `start` to `end` over training (progress 0 → 1)."""

    start: float = Field(description="The value at the start of training.")
    end: float = Field(description="The value reached at progress `until`.")
    kind: Literal["linear", "cosine"] = Field("linear", description="The path from start to end.")
    until: float = Field(1.0, gt=0, le=1, description="Progress at which `end` is reached and then held: "
                         "0.1 ramps over the first tenth of training (DKD's warm-up).")


Scalar = Union[float, Schedule]


def _values(v: Scalar) -> list[float]:
    return [v.start, v.end] if isinstance(v, Schedule) else [float(v)]


def positive_scalar(v: Scalar, what: str) -> Scalar:
    """A temperature: finite and > 0 (a schedule at both ends). T = 0 divides the logits by zero."""
    bad = [x for x in _values(v) if not (0 < x < float("inf"))]
    if bad:
        raise ValueError(f"{what} must be a finite number > 0 (the logits are divided by it); typical "
                         f"values are 1 to 8")
    return v


def unit_scalar(v: Scalar, what: str) -> Scalar:
    """A mixing weight in [0, 1] (a schedule at both ends)."""
    bad = [x for x in _values(v) if not (0 <= x <= 1)]
    if bad:
        raise ValueError(f"{what} must lie in [0, 1]: it is the share of the loss given to the teacher "
                         f"(1: teacher only, 0: labels only)")
    return v


# --------------------------------------------------------------------------- method terms
# A method is a weighted sum of terms (`losses:` in a run config). Terms that read layers name
# them by module path (`student:` / `teacher:`, e.g. `features.2`, `encoder.layer.3.output`);
# leaving a path out means the model's logits.


# --------------------------------------------------------------------------- loading


def read_raw(path: str | Path | dict[str, Any] | None, overrides: list[str] | None,
             default: Any) -> dict[str, Any]:
    """The YAML mapping at `path` (a mapping given in Python is copied; None: `default()`), with
    `key=value` overrides applied; not validated."""
    if isinstance(path, dict):
        import copy

        raw = copy.deepcopy(path)
    else:
        raw = read_yaml(Path(path)) if path else default()
    for item in overrides or []:
        _drop_alternative(raw, item.partition("=")[0].strip())
        _apply_override(raw, item)
    return raw


ALTERNATIVES = {"epochs": "steps", "steps": "epochs"}  # a budget in one unit replaces one in the other


def _drop_alternative(raw: dict[str, Any], key: str) -> None:
    """An override of `train.steps` drops the file's `train.epochs` (and the other way round): the
    budget is given in one unit, and the override is the one meant."""
    *parents, leaf = key.split(".")
    other = ALTERNATIVES.get(leaf)
    node = _walk(raw, parents) if other else None
    if isinstance(node, dict) and other in node and not isinstance(node.get(other), dict):
        node.pop(other)


def source_name(path: str | Path | dict[str, Any] | None, builtin: str) -> str:
    """How errors name where a config came from."""
    if isinstance(path, dict):
        return "config given in Python"
    return str(path) if path else builtin


def builtin_config(name: str) -> Path:
    """A YAML job shipped with the package (`distill/configs/`)."""
    return Path(__file__).parent.parent / "configs" / name


def validate_section(model: type[_Model], raw: dict[str, Any], source: str,
                     overrides: list[str] | None = None) -> _Model:
    """Validate `raw` as `model`, turning pydantic's errors into one ConfigError naming each key (and
    the command-line override that set it, when one did)."""
    old = [(path, new) for path, new in _renamed_keys(raw, getattr(model, "renamed", {}))]
    if old:
        lines = [f"`{path}` is now `{new}` (same meaning): rename it." +
                 _set_by({"loc": tuple(path.split("."))}, overrides or []) for path, new in old]
        raise ConfigError(f"Invalid {source}:\n  " + "\n  ".join(lines))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_explain(err, model) + _set_by(err, overrides or []) for err in exc.errors()]
        raise ConfigError(f"Invalid {source}:\n  " + "\n  ".join(lines)) from None


def migrate(raw: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """`raw` (a copy) with every old key of `renamed` moved to its new name; deeper keys move first, and a
    section moved onto one that exists is merged into it."""
    import copy

    raw = copy.deepcopy(raw)
    for path, new in _renamed_keys(raw, renamed):
        *parents, leaf = path.split(".")
        node = _walk(raw, parents)
        if isinstance(node, dict) and leaf in node:
            _put(raw, new.split("."), node.pop(leaf))
    return raw


def _renamed_keys(raw: dict[str, Any], renamed: dict[str, str]) -> list[tuple[str, str]]:
    """(old key as found, e.g. `losses.2.alpha`; its new name) for each old key present, deepest first."""
    found = []
    for old, new in sorted(renamed.items(), key=lambda kv: -kv[0].count(".")):
        for path in _expand(raw, old.split(".")):
            stars = iter(p for p, o in zip(path, old.split(".")) if o == "*")
            found.append((".".join(path), ".".join(next(stars) if part == "*" else part
                                                  for part in new.split("."))))
    return found


def _expand(node: Any, parts: list[str], done: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The concrete paths matching `parts` (with `*` over list indices) that exist in `node`."""
    if not parts:
        return [done]
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(node, list):
        return [p for i, item in enumerate(node) for p in _expand(item, rest, (*done, str(i)))]
    if isinstance(node, dict) and head in node:
        return _expand(node[head], rest, (*done, head))
    return []


def _walk(node: Any, parts: list[str]) -> Any:
    for part in parts:
        node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
    return node


def _put(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = _walk(raw, parts[:-1]) if len(parts) > 1 else raw
    if node is None:
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
    leaf = parts[-1]
    if isinstance(node.get(leaf), dict) and isinstance(value, dict):
        node[leaf] = {**value, **node[leaf]}
    else:
        node[leaf] = value


def _set_by(err: dict[str, Any], overrides: list[str]) -> str:
    """A sentence naming the command-line override that wrote the key in error (or a section holding
    it); empty when the value came from the file."""
    key = ".".join(_loc(err))
    for item in reversed(overrides):  # the last override of a key is the one that counts
        target = item.partition("=")[0]
        if key == target or key.startswith(target + ".") or target.startswith(key + "."):
            return f" It was set by the command-line override `{item}`."
    return ""


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "pass a YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, not {type(data).__name__}.")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override `{item}` must look like key.path=value (e.g. train.epochs=5).")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override `{item}`: `{part}` holds a value, not a section of keys.")
        node = child
    try:
        node[leaf] = yaml.safe_load(value) if value else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"Override `{item}`: the value is not valid YAML ({problem}); quote it to "
                          f"pass it as text, e.g. {key}='...'.") from None


def _loc(err: dict[str, Any]) -> list[str]:
    """The config keys of a pydantic error's location (union-member tags dropped)."""
    return [str(p) for p in err["loc"] if not str(p).startswith(("float", "Schedule", "function"))]


def _explain(err: dict[str, Any], model: type[BaseModel] = BaseModel) -> str:
    loc = _loc(err)
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], _fields_at(model, loc[:-1]))
        return f"`{key}`: unknown key.{hint}"
    if err["type"] == "missing":
        return f"`{key}`: required key is missing."
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    msg = err["msg"].removeprefix("Value error, ")
    return f"`{key}`: {msg} (got {shown})." if key else f"{msg}."


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid key names of the config section at `path` (for 'did you mean'), through lists and
    sections chosen by `kind` (e.g. `losses.0.hint`)."""
    node: Any = model
    for part in path:
        node = _step(node, part)
        if node is None:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _step(node: Any, part: str) -> Any:
    """The type one key below `node`: a field, a list item (`part` is an index) or a `kind` variant."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part)
        return field.annotation if field else None
    options = [a for a in get_args(node) if a is not type(None)]
    if part.isdigit() and get_origin(node) is list:
        return options[0] if options else None
    for option in options:
        kind = getattr(option, "model_fields", {}).get("kind")
        if kind is not None and part in get_args(kind.annotation):
            return option
        found = _step(option, part) if not isinstance(option, type) else None
        if found is not None:
            return found
    return None


