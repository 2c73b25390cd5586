"""Hugging Face exports that load in the standard loaders with the trained weights, and their check.

    export_hf(student, "out/", tokenizer=tok, labels=["business", ...], max_length=128)
    hf_agreement(student, "out/", data.test)   # {"agreement", "max_abs_diff", "n"}

A text classifier (`EncoderClassifier`) is written in the most standard form its pooling allows:
- `pooling: pooler` (BERT-like encoders): as transformers' own `...ForSequenceClassification`
  (`BertForSequenceClassification`), which computes exactly that, so
  `AutoModelForSequenceClassification.from_pretrained(dir)` and `pipeline("text-classification",
  model=dir)` load it with no custom code;
- `pooling: mean`: as `MeanPoolingForSequenceClassification` (`distill.export.modeling_distill`,
  copied beside the weights), since no stock head mean-pools: the loaders then need
  `trust_remote_code=True`.
Either answers with the trained head, the same pooling and the class names (`id2label`). Any other
Hugging Face model (a causal-LM student, a plain encoder) is saved as itself. Directories are written to a temp directory and
renamed, so a failed export leaves no half-written folder.

The folder names nothing of the machine that wrote it (no `_name_or_path`, no absolute paths), its
tokenizer loads without custom code (no `auto_map` in tokenizer_config.json; beside a mean-pooling
model, transformers reads config.json first and asks about its code unless given
`trust_remote_code=False`, which the card says), and that file's `model_max_length` and `max_length` are the
model's longest input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.errors import ExportError, ModelError
from distill.data.batches import iter_batches

MIN_AGREEMENT = 0.999


def export_hf(model: nn.Module, directory: Path | str, tokenizer: Any = None, *,
              labels: list[str] | None = None, max_length: int | None = None) -> Path:
    """Write `model` as a Hugging Face model directory (with `tokenizer`).

    `labels` name the classes of a text classifier (`id2label`); `max_length` becomes the saved
    tokenizer's `model_max_length`, so `pipeline(..., truncation=True)` cuts texts where training did.
    """
    from distill.models.causal_lm import save_pretrained_atomic  # pulls in transformers: only here
    from distill.models.encoders import EncoderClassifier

    if isinstance(model, EncoderClassifier):
        hf_model, positions = _classifier(model, labels), model.backbone.config.max_position_embeddings
    elif callable(getattr(model, "save_pretrained", None)):
        hf_model, positions = model, getattr(model.config, "max_position_embeddings", None)
    else:
        raise ModelError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained); "
                         "export it with --format safetensors or --format onnx.")
    longest = max_length or _longest_input(tokenizer, positions)
    save_pretrained_atomic(hf_model, _TokenizerThenTidy(tokenizer, longest), Path(directory))
    return Path(directory)


def _longest_input(tokenizer: Any, positions: int | None) -> int | None:
    """Without a training length: the shorter of the tokenizer's limit and the model's positions."""
    limits = [n for n in (getattr(tokenizer, "model_max_length", None), positions) if n]
    return min(limits) if limits else None


def _classifier(model: nn.Module, labels: list[str] | None) -> nn.Module:
    """The Hugging Face classifier holding `model`'s encoder and head weights: stock for `pooler`
    pooling, else `MeanPoolingForSequenceClassification`."""
    from distill.export.modeling_distill import MeanPoolingConfig, MeanPoolingForSequenceClassification

    classes = model.head.out_features
    labels = labels or [f"LABEL_{i}" for i in range(classes)]
    if len(labels) != classes:
        raise ModelError(f"{len(labels)} class names for a head of {classes} classes; pass one name per class.")
    if len(set(labels)) != len(labels):
        raise ModelError(f"class names repeat ({labels}); id2label needs distinct names.")
    names = {"num_labels": classes, "id2label": dict(enumerate(labels)),
             "label2id": {name: i for i, name in enumerate(labels)}}
    if model.pooling == "pooler":
        return _stock_classifier(model, names)
    config = MeanPoolingConfig(encoder=_encoder_settings(model.backbone.config), classifier_dropout=model.dropout.p,
                               **names)
    MeanPoolingConfig.register_for_auto_class()  # config.json's auto_map, and the code file copied
    MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    hf_model = MeanPoolingForSequenceClassification(config).eval()
    hf_model.encoder.load_state_dict(_without_pooler(model.backbone.state_dict()), strict=True)
    hf_model.classifier.load_state_dict(model.head.state_dict())
    return hf_model


def _stock_classifier(model: nn.Module, names: dict[str, Any]) -> nn.Module:
    """transformers' own sequence classifier (e.g. `BertForSequenceClassification`) with `model`'s
    encoder, pooler and head weights: the same computation, loaded without custom code."""
    from distill.models.encoders import stock_classifier

    shape = stock_classifier(model.backbone.config, **names, classifier_dropout=model.dropout.p)
    hf_model = type(shape)(shape.config).eval()  # the checked class, with real (CPU) weights
    getattr(hf_model, hf_model.base_model_prefix).load_state_dict(model.backbone.state_dict(), strict=True)
    hf_model.classifier.load_state_dict(model.head.state_dict())
    return hf_model


def _encoder_settings(config: Any) -> dict[str, Any]:
    """The encoder's config as the classifier's holds it, without the label maps transformers gives
    every config (the classifier's own are the real ones) or the path it was loaded from."""
    settings = config.to_dict()
    for key in ("_name_or_path", "id2label", "label2id"):
        settings.pop(key, None)
    return settings


def _without_pooler(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("pooler.")}


SETTINGS_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json")
SOURCE_KEYS = ("_name_or_path", "name_or_path", "tokenizer_file", "special_tokens_map_file",  # where and how the
               "is_local", "local_files_only")  # files were read: nothing the folder's readers need


class _TokenizerThenTidy:
    """Stands in for the tokenizer `save_pretrained_atomic` writes beside the model (there may be
    none), so that it lands inside the same atomic rename; being written last, it then tidies the
    folder's settings files (see `_tidy`)."""

    def __init__(self, tokenizer: Any, longest: int | None):
        self.tokenizer = tokenizer
        self.longest = longest

    def save_pretrained(self, directory: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        for name in SETTINGS_FILES:
            if (Path(directory) / name).is_file():
                _tidy(Path(directory) / name, self.longest)


def _tidy(path: Path, longest: int | None) -> None:
    """Rewrite a settings file without the paths of this machine, and tokenizer_config.json as a
    tokenizer of transformers' own whose lengths are the model's longest input."""
    settings = _without_local_paths(json.loads(path.read_text()))
    if path.name == "tokenizer_config.json":
        settings.pop("auto_map", None)  # a stock tokenizer: no custom code to route it through
        if longest is not None:
            settings["model_max_length"] = longest
        if "max_length" in settings:  # e.g. all-MiniLM-L6-v2's 128, beside its own model_max_length
            settings["max_length"] = settings["model_max_length"]
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _without_local_paths(value: Any) -> Any:
    """`value` without the entries naming where its files were read from, or a path of this machine."""
    if isinstance(value, dict):
        return {k: _without_local_paths(v) for k, v in value.items()
                if k not in SOURCE_KEYS and not _is_local_path(v)}
    if isinstance(value, list):
        return [_without_local_paths(v) for v in value if not _is_local_path(v)]
    return value


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and os.path.isabs(value) and os.path.exists(value)


def load_hf_classifier(directory: Path | str) -> nn.Module:
    """The exported classifier as `AutoModelForSequenceClassification.from_pretrained(directory,
    trust_remote_code=True)` builds it (eval mode), without running code from the folder: a stock
    one as transformers loads it, else its `modeling_distill.py` must be this distill's own, whose
    class then loads the weights and config."""
    from distill.export import modeling_distill

    if not needs_custom_code(directory):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(directory), use_safetensors=True).eval()
    copied = Path(directory) / "modeling_distill.py"
    ours = Path(modeling_distill.__file__).read_bytes()
    if not copied.is_file() or copied.read_bytes() != ours:
        raise ExportError(f"{copied} is missing or differs from this distill's modeling_distill.py; re-export "
                          "the model (distill export --format hf) to check it.")
    return modeling_distill.MeanPoolingForSequenceClassification.from_pretrained(str(directory)).eval()


def needs_custom_code(directory: Path | str) -> bool:
    """Whether the exported folder's config routes its loaders through code in the folder (`auto_map`)."""
    return "auto_map" in json.loads((Path(directory) / "config.json").read_text())


@torch.no_grad()
def hf_agreement(model: nn.Module, directory: Path | str, test: Any, *, batch_size: int = 256,
                 min_agreement: float = MIN_AGREEMENT) -> dict[str, float]:
    """How often the exported classifier, loaded by transformers, picks `model`'s class on `test`.

    Raises ExportError below `min_agreement` (the folder is kept for inspection).
    """
    from distill.models.zoo import logits_of

    exported = load_hf_classifier(directory)
    was_training = model.training
    model.eval()
    same = n = 0
    worst = torch.zeros(())
    try:
        for batch in iter_batches(test, torch.arange(len(test)), batch_size):
            x = batch["inputs"]
            ours = logits_of(model(x)).float()
            theirs = exported(input_ids=x[:, 0], attention_mask=x[:, 1]).logits.float()
            worst = torch.maximum(worst, (ours - theirs).abs().max())
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            n += len(x)
    finally:
        model.train(was_training)
    report = {"agreement": same / max(n, 1), "max_abs_diff": float(worst), "n": float(n)}
    if not report["agreement"] >= min_agreement:
        raise ExportError(f"The Hugging Face export in {directory} picks the same class as the trained model on "
                          f"{report['agreement']:.4%} of {n} test examples (required {min_agreement:.1%}); "
                          "the folder is kept for inspection.")
    return report
