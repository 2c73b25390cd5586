"""A Hugging Face encoder with mean pooling and a linear head: distill's text classifier, as a model
`transformers` loads by itself.

This file is copied into every exported text-classifier directory and named in its config's
`auto_map`, so

    AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True)
    pipeline("text-classification", model=directory, trust_remote_code=True)

build this class with the trained encoder, pooling and head. It imports only torch and
transformers. transformers' own `...ForSequenceClassification` classes pool the first token
through a dense layer; a mean-pooled student loaded into one of them would get a random head, so
the config has its own `model_type` and a loader without `trust_remote_code=True` refuses it
instead of guessing.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolingConfig(PretrainedConfig):
    """The classifier's settings; `encoder` is the encoder's own config (a dict with its model_type)."""

    model_type = "distill-mean-pooling"

    def __init__(self, encoder: dict | None = None, classifier_dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = dict(encoder or {})
        self.classifier_dropout = classifier_dropout

    def encoder_config(self) -> PretrainedConfig:
        settings = dict(self.encoder)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Encoder → mean of the real tokens' last hidden states → dropout → linear head."""

    config_class = MeanPoolingConfig
    base_model_prefix = "encoder"

    def __init__(self, config: MeanPoolingConfig):
        super().__init__(config)
        encoder = config.encoder_config()
        try:  # BERT-like encoders: no first-token pooler (unused, and untrained)
            self.encoder = AutoModel.from_config(encoder, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(encoder)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(encoder.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, H)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
