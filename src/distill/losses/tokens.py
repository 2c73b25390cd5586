"""The LM distillation objective: ratio · divergence(teacher ‖ student) + (1 − ratio) · CE.

Computed from the student's final hidden states and output layer in chunks of tokens
(`distill.losses.divergences.chunked_token_sum`), so the (tokens × vocab) logits never exist at once
when there are more than `chunk_tokens` tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.core.config import Strict
from distill.losses.divergences import Kind, chunked_token_sum, per_token_divergence
from distill.teachers.tokens import TokenSignal


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], signal: TokenSignal | None,
            cfg: LMLossConfig, vocab: int) -> dict[str, torch.Tensor]:
    """{"loss", "ce", "kd"} means over the batch's `loss_mask` tokens; "kd" only with a signal.

    A float `loss_mask` weighs tokens (e.g. `distill.recipes.textkd.examples`: each example's tokens sum to
    its task weight); the means are then weighted means.
    """
    ratio = cfg.ratio if signal is not None else 0.0
    hidden, weight, bias = student_hidden(model, batch)  # (B, L, d), (V', d), (V',) | None
    labels = torch.roll(batch["input_ids"], -1, dims=1)  # position t predicts token t + 1  (B, L)
    mask = batch["loss_mask"]
    t = cfg.temperature

    def per_token(logits: torch.Tensor, labels: torch.Tensor, *teacher: torch.Tensor | None) -> torch.Tensor:
        logits = logits[:, :vocab]  # padded embedding rows are not tokens
        zeros = logits.new_zeros(len(logits), dtype=torch.float32)
        ce = F.cross_entropy(logits.float(), labels, reduction="none") if ratio < 1 else zeros
        kd = zeros
        if ratio > 0:
            t_logits, t_lp, t_idx, t_tail = teacher
            kd = per_token_divergence(logits, kind=cfg.kind, teacher_logits=t_logits, teacher_topk_logprobs=t_lp,
                                      teacher_topk_indices=t_idx, teacher_tail_logprob=t_tail,
                                      temperature=t, beta=cfg.beta, alpha=cfg.alpha)
        return torch.stack([ce, kd], dim=-1)  # (n, 2)

    sig = signal.as_kwargs() if signal is not None else {}
    teacher = [sig.get(k) for k in ("teacher_logits", "teacher_topk_logprobs", "teacher_topk_indices",
                                    "teacher_tail_logprob")]
    sums = chunked_token_sum(hidden, weight, per_token, [labels, *teacher], mask.float(),
                             chunk_size=cfg.chunk_tokens, lm_head_bias=bias)
    n = mask.float().sum().clamp_min(1e-8)  # all-masked: the sums are 0, and so is the loss
    ce, kd = sums[0] / n, sums[1] / n
    parts = {"loss": (1 - ratio) * ce + ratio * t * t * kd}
    if ratio < 1:
        parts["ce"] = ce
    if ratio > 0:
        parts["kd"] = kd
    return parts


def student_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor | None]:
    """The final hidden states and the output layer's weight and bias, for a plain linear LM head."""
    head = model.get_output_embeddings()
    config = model.config
    if any(getattr(config, a, None) for a in ("final_logit_softcapping", "logit_scale", "output_mult")):
        raise NotImplementedError(f"{type(model).__name__} transforms its logits after the output layer; "
                                  "its chunked loss is not supported yet.")
    out = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.last_hidden_state, head.weight, head.bias


class LMLossConfig(Strict):
    """loss = ratio · divergence(teacher ‖ student) + (1 − ratio) · next-token CE, over masked tokens.

    The default ratio 0.5 is the measured winner (benchmarks/llm_quality.py): pure forward KL (ratio 1)
    left the student closer to the teacher but with a worse held-out perplexity than plain CE."""

    kind: Kind = "forward_kl"
    ratio: float = Field(0.5, ge=0, le=1, description="Weight of the divergence; 1 − ratio goes to next-token CE.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.5, ge=0, le=1, description="JSD interpolation.")
    alpha: float = Field(0.1, ge=0, lt=1, description="Skew of skew_kl / skew_reverse_kl.")
    chunk_tokens: int = Field(4096, ge=1, description="Logits are computed this many tokens at a time.")
    warm_start: int = Field(0, ge=0, description="First steps with next-token CE only, before the divergence "
                            "starts: the supervised start MiniLLM and GKD give reverse KL and JSD.")
