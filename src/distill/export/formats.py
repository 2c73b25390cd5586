"""`distill export` of a trained classifier: one call that writes any format, checks it, and writes
its model card.

    export_model(student, "hf", "out/", data.test, check=True, labels=data.class_names,
                 tokenizer="all-MiniLM-L6-v2", max_length=128, card=text)

Formats: `safetensors` (one weights file), `hf` (a directory `transformers` loads;
`distill.export.hf`), `onnx` (`distill.export.onnx`, optionally int8). With `check`, an ONNX file is
compared with PyTorch on the test split, and an HF directory is loaded back by transformers and
compared the same way; the figures go into the result (and the card). An ONNX file carries the class
names and the input preprocessing the export knows in its metadata (`onnx_metadata`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn
from torch.utils.data import Dataset

from distill.core.checkpoint import save_weights
from distill.core.errors import ModelError
from distill.core.files import atomic_write_text

FORMATS = ("onnx", "safetensors", "hf")


def export_safetensors(model: nn.Module, path: Path | str, meta: dict[str, Any] | None = None) -> Path:
    """The model's weights as one safetensors file (atomic), `meta` in its metadata."""
    save_weights(Path(path), model, meta)
    return Path(path)


def export_model(model: nn.Module, fmt: str, out: Path | str, test: Dataset, *, check: bool = False,
                 meta: dict[str, Any] | None = None, tokenizer: str | None = None, int8: bool = False,
                 labels: list[str] | None = None, max_length: int | None = None,
                 preprocessing: dict[str, float] | None = None,
                 card: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """Write `model` as `fmt` to `out`; with `check`, measure the export against the model on `test`.

    `meta` goes into a safetensors file's metadata; the `tokenizer` named (a text config's
    `data.tokenizer`) is saved into an HF directory with `labels` as id2label. An ONNX file gets
    `labels`, `tokenizer`, `max_length` and `preprocessing` (an array dataset's `input_scale`,
    `input_mean`, `input_std`) in its metadata. `int8` (ONNX only) writes the ONNX Runtime
    dynamically quantized model; its check requires INT8_MIN_TOP1 agreement.
    `card(result)` gives the model card text from this call's result: README.md inside an HF directory, and
    `<out>.README.md` beside a file.
    """
    from distill.export import onnx

    if fmt not in FORMATS:
        raise ModelError(f"Unknown export format `{fmt}`; choose one of {list(FORMATS)}.")
    if check and fmt == "safetensors":
        raise ModelError("--check compares an ONNX or HF export with PyTorch; it does not apply to "
                         "--format safetensors (the file holds the same tensors).")
    if int8 and fmt != "onnx":
        raise ModelError(f"--int8 quantizes an ONNX export with ONNX Runtime; it does not apply to --format {fmt} "
                         "(for PyTorch int8 use `distill quantize`).")
    result: dict[str, Any] = {"format": fmt, "path": str(out)}
    if fmt == "safetensors":
        export_safetensors(model, out, meta)
    elif fmt == "hf":
        from distill.data.tokenizers import load_tokenizer
        from distill.export.hf import export_hf, hf_agreement, needs_custom_code

        tok = load_tokenizer(tokenizer) if tokenizer else None
        export_hf(model, out, tok, labels=labels, max_length=max_length)
        result["custom_code"] = needs_custom_code(out)
        if check:
            result["parity"] = hf_agreement(model, out, test)
    else:
        example = next(onnx._batches(test, 2))
        if int8:
            with tempfile.TemporaryDirectory() as tmp:
                onnx.quantize_onnx(onnx.export_onnx(model, example, Path(tmp) / "fp32.onnx"), out)
        else:
            onnx.export_onnx(model, example, out)
        onnx.write_metadata(out, onnx_metadata(labels, tokenizer, max_length, preprocessing))
        result["input_names"] = onnx.input_names(example)
        if check:
            bounds = ({"atol": float("inf"), "min_top1": onnx.INT8_MIN_TOP1, "advice": onnx.INT8_ADVICE}
                      if int8 else {})
            parity = onnx.check_parity(model, out, test, **bounds).as_dict()
            result["parity"] = {"agreement": parity["top1_agreement"], **parity}
            if len(onnx.input_names(example)) == 2:  # text: the sequence axis is dynamic; check another length
                short = next(onnx._batches(test, 64))
                short = short[..., : max(2, short.shape[-1] // 2)]
                result["parity"]["half_length_agreement"] = onnx.check_parity(
                    model, out, short, **bounds).top1_agreement
    if card is not None:
        path = Path(out) / "README.md" if fmt == "hf" else Path(f"{out}.README.md")
        atomic_write_text(path, card(result))
        result["card"] = str(path)
    return result


def onnx_metadata(labels: list[str] | None, tokenizer: str | None, max_length: int | None,
                  preprocessing: dict[str, float] | None) -> dict[str, str]:
    """What a reader of an ONNX file needs beside it, as metadata strings: `class_names` (a JSON list,
    index = output position) and how inputs are prepared (`preprocessing`, with the values it names)."""
    props: dict[str, str] = {}
    if labels:
        props["class_names"] = json.dumps(labels, ensure_ascii=False)
    if tokenizer:
        props["tokenizer"] = _public_name(tokenizer)
        limit = " to max_length tokens" if max_length else ""
        props["preprocessing"] = (f"tokenize with {props['tokenizer']}, truncating{limit}; "
                                  "feed input_ids and attention_mask")
    if max_length:
        props["max_length"] = str(max_length)
    if preprocessing:
        props.update({key: repr(float(value)) for key, value in preprocessing.items()})
        props["preprocessing"] = "inputs = (raw / input_scale - input_mean) / input_std"
    return props


def _public_name(tokenizer: str) -> str:
    """A hub id or built-in name as given; a local directory by its name, not where it lies here."""
    return Path(tokenizer).name if Path(tokenizer).is_absolute() else tokenizer
