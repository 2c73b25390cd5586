"""User-facing errors: each says what is wrong, where (config key, file, module path) and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """Base class for errors a user can act on; the CLI prints them without a traceback."""


class ConfigError(DistillError):
    """A config key is unknown, has the wrong type, or names a missing file."""


class DataError(DistillError):
    """A dataset is missing, malformed, or its labels do not fit the model."""


class ModelError(DistillError):
    """A model cannot be built, or teacher and student do not fit together."""


class CheckpointError(DistillError):
    """A checkpoint or cache file is missing, corrupt, or belongs to another model."""


class TrainingDiverged(DistillError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(DistillError):
    """An exported model (e.g. ONNX) disagrees with its PyTorch original beyond the tolerance."""


class OutputError(DistillError):
    """A result file cannot be written: the disk is full, or the directory is not writable."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean `x`?' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean `{close[0]}`?" if close else ""
