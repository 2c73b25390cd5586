"""`distill monitor`: catch a deployed student drifting from its teacher on production inputs.

    distill monitor CONFIG.yaml teacher.checkpoint=T student.checkpoint=S --inputs inputs.jsonl

Inputs are read one at a time (`read_inputs`: JSON lines, stdin, or a .npy/.safetensors file of
stacked inputs), a seeded random fraction is kept (`sample`), and teacher and student run on each
window of kept inputs (`windows`), which reports their top-1 agreement and KL(teacher‖student).
A window alerts when its disagreement or KL exceeds a threshold. Exit codes: 0 no window alerted,
3 (`EXIT_ALERT`) one did, 2 bad input or options (the CLI's code for every user error).
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from distill.core.errors import ConfigError, DataError
from distill.data.arrays import ArrayDataset, DataSplits
from distill.eval.metrics import agreement, kl_divergence, predict

EXIT_OK, EXIT_ALERT = 0, 3
EXPECTED = 'one input per line, as {"inputs": [...]} or a bare nested list of numbers'
_TOLERANCE = 1e-6  # agreement is a float32 mean: 19/20 must not read as just above 5% disagreement


@dataclass(frozen=True)
class MonitorOptions:
    """The command's flags; checked when built, before any model is loaded."""

    sample: float = 0.1  # fraction of inputs checked
    window: int = 1000  # sampled inputs per window
    max_disagreement: float = 0.05  # alert above this share of top-1 disagreements
    max_kl: float = 0.1  # alert above this mean KL(teacher‖student), nats
    seed: int = 0
    batch_size: int = 256
    fail_fast: bool = False  # stop at the first alerting window

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ConfigError(f"--sample must be a fraction in (0, 1], got {self.sample}")
        if self.window < 1:
            raise ConfigError(f"--window must be at least 1, got {self.window}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_disagreement < 0 or self.max_kl < 0:
            raise ConfigError("--max-disagreement and --max-kl must be ≥ 0")


@dataclass
class WindowStats:
    window: int
    n: int
    agreement: float
    kl: float
    alert: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def row(self) -> str:
        status = "ALERT: " + "; ".join(self.reasons) if self.alert else "ok"
        return f"{self.window:>6} {self.n:>7} {self.agreement:>10.2%} {self.kl:>10.4f}  {status}"


def read_inputs(source: str | Path | TextIO, input_shape: tuple[int, ...], *,
                where: str = "the config's data", dtype: torch.dtype = torch.float32
                ) -> Iterator[torch.Tensor]:
    """Yield one input of shape `input_shape` at a time from `source`.

    Args:
        source: "-" (stdin), an open text stream, or a path: `.npy` / `.safetensors` (inputs stacked
            along the first axis) or anything else as JSON lines.
        input_shape: what the models take per example (the config's data), checked on every input.
        where: names the config's data in shape errors.
        dtype: the dtype the models take (float, or int64 token ids).
    """
    if not isinstance(source, (str, Path)):
        yield from _json_lines(source, "input stream", input_shape, where, dtype)
        return
    if str(source) == "-":
        yield from _json_lines(sys.stdin, "stdin", input_shape, where, dtype)
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"--inputs {path}: no such file. Give a JSON-lines, .npy or .safetensors "
                        "file, or - for stdin.")
    if path.suffix in (".npy", ".safetensors"):
        stacked = _stacked(path)
        if tuple(stacked.shape[1:]) != tuple(input_shape):
            raise DataError(f"{path}: inputs stacked as {tuple(stacked.shape)}, expected (N, "
                            f"{', '.join(map(str, input_shape))}) for {where}.")
        for row in stacked:  # a NumPy row is copied out of the memory map
            yield (torch.as_tensor(np.array(row)) if isinstance(row, np.ndarray) else row).to(dtype)
        return
    with open(path) as f:
        yield from _json_lines(f, str(path), input_shape, where, dtype)


def _json_lines(lines: Iterable[str], name: str, input_shape: tuple[int, ...], where: str,
                dtype: torch.dtype) -> Iterator[torch.Tensor]:
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield parse_line(line, f"{name} line {lineno}", input_shape, where, dtype)


def parse_line(line: str, at: str, input_shape: tuple[int, ...], where: str = "the config's data",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One JSON line as an input tensor; `at` ("FILE line N") starts every error."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{at}: not valid JSON ({exc.msg}); expected {EXPECTED}.") from None
    if isinstance(value, dict):
        if "inputs" not in value:
            raise DataError(f"{at}: an object without an \"inputs\" key; expected {EXPECTED}.")
        value = value["inputs"]
    if not isinstance(value, list):
        raise DataError(f"{at}: the input is {type(value).__name__}, not a nested list; "
                        f"expected {EXPECTED}.")
    try:
        x = torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{at}: not a rectangular nested list of numbers; expected {EXPECTED}.") from None
    if tuple(x.shape) != tuple(input_shape):
        raise DataError(f"{at}: an input of shape {tuple(x.shape)}, expected {tuple(input_shape)} "
                        f"({where}).")
    return x


def _stacked(path: Path) -> Any:
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r")  # rows are read as they are needed
        from safetensors.torch import load_file

        tensors = load_file(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}).") from None
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if "inputs" in tensors:
        return tensors["inputs"]
    raise DataError(f"{path} holds tensors {sorted(tensors)}; name the stacked inputs `inputs`.")


def input_dtype(data: DataSplits) -> torch.dtype:
    """The dtype the config's models take: that of its in-memory test inputs, else float32."""
    inputs = getattr(data.test, "inputs", None)
    return inputs.dtype if isinstance(inputs, torch.Tensor) else torch.float32


def model_inputs(source: str | Path | TextIO, data: DataSplits, *, where: str, raw: bool = False
                 ) -> Iterator[torch.Tensor]:
    """`--inputs` as the models take them: read as given, or (`raw`) in the units of the dataset's files
    and preprocessed as its training data was; float inputs far from the test split's are warned about."""
    if raw:
        if data.prepare is None or data.modality == "text":
            raise DataError(f"--raw: {where} takes its model inputs here (token rows for text); drop --raw.")
        return (data.prepare(x[None])[0] for x in read_inputs(source, data.input_shape, where=where))
    inputs = read_inputs(source, data.input_shape, where=where, dtype=input_dtype(data))
    reference = data.test.inputs[:1024] if hasattr(data.test, "inputs") else None
    return unlike_model_inputs(inputs, reference) if reference is not None and reference.is_floating_point() \
        else inputs


def unlike_model_inputs(inputs: Iterable[torch.Tensor], reference: torch.Tensor, look: int = 64
                        ) -> Iterator[torch.Tensor]:
    """`inputs` unchanged, with a warning when the first `look` of them are far from the model's own
    inputs (`reference`, e.g. the test split's): mean more than 3 reference stds away, or spread 10×
    larger or smaller, as raw pixels (0–255) sent where standardised ones were expected would be."""
    seen: list[torch.Tensor] = []
    for x in inputs:
        if len(seen) < look and x.is_floating_point():
            seen.append(x)
            if len(seen) == look:
                _warn_if_unlike(torch.stack(seen), reference)
        yield x
    if 0 < len(seen) < look:
        _warn_if_unlike(torch.stack(seen), reference)


def _warn_if_unlike(got: torch.Tensor, reference: torch.Tensor) -> None:
    m, s = float(got.mean()), float(got.std()) if got.numel() > 1 else 0.0
    rm, rs = float(reference.mean()), float(reference.std())
    if rs > 0 and (abs(m - rm) > 3 * rs or (s > 0 and not 0.1 < s / rs < 10)):
        warnings.warn(f"--inputs: the first {len(got)} inputs (mean {m:.3g}, std {s:.3g}) are unlike the model's "
                      f"own inputs (test split: mean {rm:.3g}, std {rs:.3g}). distill monitor takes inputs after "
                      "the dataset's preprocessing; inputs in the units of its files (e.g. pixels 0–255) need "
                      "--raw.", stacklevel=2)


def sample(stream: Iterable[Any], fraction: float, seed: int = 0) -> Iterator[Any]:
    """Keep each item with probability `fraction`: the same items for the same seed and stream.

    Raises DataError once the stream ends, if it held nothing or nothing was kept.
    """
    rng = random.Random(seed)
    seen = kept = 0
    for item in stream:
        seen += 1
        if rng.random() < fraction:
            kept += 1
            yield item
    if seen == 0:
        raise DataError("the input stream had no inputs; give --inputs a non-empty file (or pipe inputs "
                        f"to -), {EXPECTED}.")
    if kept == 0:
        raise DataError(f"none of the stream's {seen} inputs was sampled at --sample {fraction}; "
                        "raise --sample.")


def windows(inputs: Iterable[torch.Tensor], teacher: nn.Module, student: nn.Module,
            options: MonitorOptions = MonitorOptions()) -> Iterator[WindowStats]:
    """Stats of each `options.window` consecutive inputs (the last window may be smaller), numbered from 1."""
    chunk: list[torch.Tensor] = []
    index = 1
    for x in inputs:
        chunk.append(x)
        if len(chunk) == options.window:
            yield _window(index, torch.stack(chunk), teacher, student, options)
            chunk, index = [], index + 1
    if chunk:
        yield _window(index, torch.stack(chunk), teacher, student, options)


def _window(index: int, x: torch.Tensor, teacher: nn.Module, student: nn.Module,
            options: MonitorOptions) -> WindowStats:
    data = ArrayDataset(x, torch.zeros(len(x)))  # (n, *input_shape); the labels are unused
    return window_stats(index, predict(teacher, data, options.batch_size),
                        predict(student, data, options.batch_size), options)


def window_stats(index: int, teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                 options: MonitorOptions = MonitorOptions()) -> WindowStats:
    """Agreement and KL of one window's (n, C) logits, and whether they cross the thresholds."""
    agree, kl = agreement(teacher_logits, student_logits), kl_divergence(teacher_logits, student_logits)
    reasons = []
    if 1 - agree > options.max_disagreement + _TOLERANCE:
        reasons.append(f"disagreement {1 - agree:.4f} > {options.max_disagreement}")
    if kl > options.max_kl:
        reasons.append(f"kl {kl:.4f} > {options.max_kl}")
    return WindowStats(window=index, n=len(teacher_logits), agreement=round(agree, 6), kl=round(kl, 6),
                       alert=bool(reasons), reasons=reasons)


def run_monitor(teacher: nn.Module, student: nn.Module, inputs: Iterable[torch.Tensor],
                options: MonitorOptions, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Sample `inputs`, print one line per window (JSON with `as_json`), return the exit code."""
    out = out or sys.stdout
    n_windows = alerts = sampled = 0
    for stats in windows(sample(inputs, options.sample, options.seed), teacher, student, options):
        if n_windows == 0 and not as_json:  # no header above an error about the input
            print(f"{'window':>6} {'n':>7} {'agreement':>10} {'KL(T‖S)':>10}  status", file=out)
        print(stats.to_json() if as_json else stats.row(), file=out, flush=True)
        n_windows, alerts, sampled = n_windows + 1, alerts + stats.alert, sampled + stats.n
        if stats.alert and options.fail_fast:
            break
    stopped = " (stopped at the first: --fail-fast)" if alerts and options.fail_fast else ""
    print(f"monitor: {sampled} sampled inputs in {n_windows} window(s), {alerts} alerted{stopped}",
          file=sys.stderr)
    return EXIT_ALERT if alerts else EXIT_OK
