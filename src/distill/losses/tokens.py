"""The LM distillation objective: ratio · T² · divergence(teacher ‖ student) + (1 − ratio) · CE (`kd` settings).

Computed from the student's final hidden states and output layer in chunks of tokens
(`distill.losses.divergences.chunked_token_sum`), so the (tokens × vocab) logits never exist at once
when there are more than `chunk_tokens` tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.config import TokenKDConfig
from distill.losses.cross_tokenizer import cross_divergence
from distill.losses.divergences import chunked_token_sum, per_token_divergence
from distill.teachers.output import TeacherOutput


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], signal: TeacherOutput | None,
            cfg: TokenKDConfig, vocab: int) -> dict[str, torch.Tensor]:
    """{"loss", "ce", "kd"} means over the batch's `loss_mask` tokens; "kd" only with a signal.

    A float `loss_mask` weighs tokens (e.g. `distill.recipes.textkd.examples`: each example's tokens sum to
    its task weight); the means are then weighted means. A mixture signal (several teachers) gives
    "kd" = Σ_i w_i · divergence(teacher_i ‖ student) per token, w_i its per-token part weights.
    """
    ratio = cfg.ratio if signal is not None else 0.0
    hidden, weight, bias = student_hidden(model, batch)  # (B, L, d), (V', d), (V',) | None
    labels = torch.roll(batch["input_ids"], -1, dims=1)  # position t predicts token t + 1  (B, L)
    mask = batch["loss_mask"]
    t = cfg.temperature

    aligned = signal.valid if signal is not None else None  # another tokenizer: KD where both read alike
    aligned = None if aligned is None else aligned.float()

    parts = signal.components() if signal is not None else []
    n_parts = len(parts)

    def per_token(logits: torch.Tensor, labels: torch.Tensor, here: torch.Tensor | None,
                  part_weights: torch.Tensor | None, *teachers: torch.Tensor | None) -> torch.Tensor:
        logits = logits[:, :vocab]  # padded embedding rows are not tokens
        zeros = logits.new_zeros(len(logits), dtype=torch.float32)
        ce = F.cross_entropy(logits.float(), labels, reduction="none") if ratio < 1 else zeros
        kd = zeros
        for i in range(n_parts if ratio > 0 else 0):  # several teachers: each divergence at its weight
            t_logits, t_lp, t_idx, t_tail = teachers[4 * i: 4 * i + 4]
            if here is not None:  # t_idx: the student ids spelling the teacher's top-k tokens, -1 if none
                d = cross_divergence(cfg.cross, logits, t_lp, t_tail, t_idx) * here
            elif sampled[i]:
                d = sampled_reverse_kl(logits, labels, t_lp[:, 0], t)
            else:
                d = per_token_divergence(logits, kind=cfg.divergence, teacher_logits=t_logits,
                                         teacher_topk_logprobs=t_lp, teacher_topk_indices=t_idx,
                                         teacher_tail_logprob=t_tail, temperature=t, jsd_beta=cfg.jsd_beta,
                                         skew=cfg.skew)
            kd = kd + (d if part_weights is None else d * part_weights[:, i])
        return torch.stack([ce, kd], dim=-1)  # (n, 2)

    sampled = [out.sampled for out, _ in parts]
    teachers = [x for out, _ in parts for x in (out.logits, out.topk_logprobs, out.topk_indices, out.tail_logprob)]
    weights = signal.part_weights if signal is not None else None
    sums = chunked_token_sum(hidden, weight, per_token, [labels, aligned, weights, *teachers], mask.float(),
                             chunk_size=cfg.chunk_tokens, lm_head_bias=bias)
    n = mask.float().sum().clamp_min(1e-8)  # all-masked: the sums are 0, and so is the loss
    n_kd = n if aligned is None else (mask.float() * aligned).sum().clamp_min(1e-8)
    ce, kd = sums[0] / n, sums[1] / n_kd
    parts = {"loss": (1 - ratio) * ce + ratio * t * t * kd}
    if ratio < 1:
        parts["ce"] = ce
    if ratio > 0:
        parts["kd"] = kd
    return parts


def sampled_reverse_kl(logits: torch.Tensor, labels: torch.Tensor, teacher_logprob: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Per token, the one-sample estimate of reverse KL(q ‖ p) at the token the student wrote, for a
    teacher that gives only that token's log-prob: its value is log q(x) − log p(x), its gradient
    (log q(x) − log p(x))·∇ log q(x), the policy gradient with the per-token reward log p − log q that
    on-policy distillation with such teachers uses. Unbiased only on tokens sampled from the student."""
    log_q = F.log_softmax(logits.float() / temperature, dim=-1).gather(-1, labels[:, None])[:, 0]
    gap = (log_q - teacher_logprob).detach()
    return gap + (log_q - log_q.detach()) * gap


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
