"""Divergences between teacher and student token distributions, for LLM (and any) distillation.

One library, two teacher formats:

* full logits: ``teacher_logits`` (..., V), like ``student_logits``;
* sparse top-k: ``teacher_topk_logprobs`` and ``teacher_topk_indices`` (..., k), the teacher's k
  most likely tokens. The rest of its mass (the *tail*, 1 − Σ top-k) becomes one extra bin, and
  the student's probabilities are gathered at the same k tokens plus its own tail. With k = V the
  tail is empty and the sparse divergence equals the full one.

Every divergence is a per-token value reduced as a masked mean over tokens (all-masked → 0).
Temperature divides both logits; no T² factor is applied here (multiply by T² to keep gradient
scale across temperatures, as in `distill.losses.terms.soft_target_kl`).

Definitions, with p the teacher and q the student distribution:
  forward KL           KL(p ‖ q)                        (Hinton et al. 2015; "mean-seeking")
  reverse KL           KL(q ‖ p)                        (MiniLLM, Gu et al. 2024; "mode-seeking")
  generalized JSD(β)   [β·KL(p ‖ m) + (1−β)·KL(q ‖ m)] / (β(1−β)),  m = β·p + (1−β)·q
                       → forward KL as β → 0 and reverse KL as β → 1, continuously
                       (the GKD family, Agarwal et al. 2024, normalised so that its limits are the KLs)
  skew KL(α)           KL(p ‖ α·p + (1−α)·q)           (DistiLLM, Ko et al. 2024); α = 0 → forward KL
  skew reverse KL(α)   KL(q ‖ α·q + (1−α)·p)           α = 0 → reverse KL
  TVD                  ½·Σ |p − q|
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from distill.losses.fused_kl import LOG_FLOOR, full_kl  # LOG_FLOOR: 0·log 0 terms stay finite (exp(-1e3) == 0)


def token_divergence(student_logits: torch.Tensor, *, kind: Kind = "forward_kl",
                     teacher_logits: torch.Tensor | None = None,
                     teacher_topk_logprobs: torch.Tensor | None = None,
                     teacher_topk_indices: torch.Tensor | None = None,
                     teacher_tail_logprob: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, temperature: float = 1.0,
                     jsd_beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """Masked mean over tokens of a divergence between teacher and student distributions.

    Args:
        student_logits: (..., V) student logits.
        kind: one of `KINDS`.
        teacher_logits: (..., V) teacher logits (full format), or
        teacher_topk_logprobs, teacher_topk_indices: (..., k) teacher top-k (sparse format), as
            log-probabilities at temperature 1; renormalised at `temperature` within the top-k + tail.
        teacher_tail_logprob: (..., 1) log of the teacher's mass outside the top-k, when stored
            (e.g. by a cache in a compact dtype); computed as log(1 − Σ top-k) when omitted.
        mask: (...) true where a token counts (e.g. response tokens); default all.
        temperature: T > 0 applied to both distributions.
        jsd_beta: the generalized JSD's interpolation β in [0, 1].
        skew: α in [0, 1) of the skew KLs.
    """
    per_token = per_token_divergence(student_logits, kind=kind, teacher_logits=teacher_logits,
                                     teacher_topk_logprobs=teacher_topk_logprobs,
                                     teacher_topk_indices=teacher_topk_indices,
                                     teacher_tail_logprob=teacher_tail_logprob,
                                     temperature=temperature, jsd_beta=jsd_beta, skew=skew)
    return masked_mean(per_token, mask)


def per_token_divergence(student_logits: torch.Tensor, *, kind: Kind = "forward_kl",
                         teacher_logits: torch.Tensor | None = None,
                         teacher_topk_logprobs: torch.Tensor | None = None,
                         teacher_topk_indices: torch.Tensor | None = None,
                         teacher_tail_logprob: torch.Tensor | None = None,
                         temperature: float = 1.0, jsd_beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """The divergence at each position (...), before masking; arguments as in `token_divergence`.
    Forward and reverse KL against full teacher logits that carry no gradient take the fused path
    (`distill.losses.fused_kl`: the same values and gradients, except forward KL's gradient below
    the log floor, with less memory traffic)."""
    if teacher_logits is not None and kind in ("forward_kl", "reverse_kl") and not teacher_logits.requires_grad:
        return full_kl(student_logits, teacher_logits, temperature=temperature, reverse=kind == "reverse_kl")
    log_p, log_q = _bins(student_logits, teacher_logits, teacher_topk_logprobs, teacher_topk_indices,
                         temperature, teacher_tail_logprob)
    return divergence(log_p, log_q, kind=kind, jsd_beta=jsd_beta, skew=skew)


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, *, kind: Kind, jsd_beta: float = 0.5,
               skew: float = 0.1) -> torch.Tensor:
    """Per-position divergence between distributions given as log-probabilities over the last dim."""
    if kind not in DIVERGENCES:
        raise ValueError(f"Unknown divergence `{kind}`; choose one of {KINDS}.")
    return DIVERGENCES[kind](log_p, log_q, jsd_beta, skew)


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ a·(log a − log b) over the last dim, with 0·log 0 = 0."""
    log_a, log_b = log_a.clamp_min(LOG_FLOOR), log_b.clamp_min(LOG_FLOOR)
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """[β·KL(p ‖ m) + (1−β)·KL(q ‖ m)] / (β(1−β)) with m = β·p + (1−β)·q; the KLs at β = 0 and 1."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd_beta must be in [0, 1], got {beta}.")
    if beta == 0.0:
        return kl(log_p, log_q)
    if beta == 1.0:
        return kl(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return (beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)) / (beta * (1 - beta))


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` where `mask` is true; 0 (not NaN) when nothing is selected."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """log(w·a + (1−w)·b), computed stably in log space."""
    if weight <= 0.0:
        return log_b
    if weight >= 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


# The registry: name → per-position divergence of (teacher log_p, student log_q, jsd_beta, skew).
# A new divergence is one entry here; configs (`kd.divergence`) and the CLI accept it from then on.
DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]] = {
    "forward_kl": lambda log_p, log_q, jsd_beta, skew: kl(log_p, log_q),
    "reverse_kl": lambda log_p, log_q, jsd_beta, skew: kl(log_q, log_p),
    "jsd": lambda log_p, log_q, jsd_beta, skew: generalized_jsd(log_p, log_q, jsd_beta),
    "skew_kl": lambda log_p, log_q, jsd_beta, skew: kl(log_p, _log_mix(log_p, log_q, skew)),
    "skew_reverse_kl": lambda log_p, log_q, jsd_beta, skew: kl(log_q, _log_mix(log_q, log_p, skew)),
    "tvd": lambda log_p, log_q, jsd_beta, skew: 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1),
}
KINDS: tuple[str, ...] = tuple(DIVERGENCES)
Kind = Literal[KINDS]  # type: ignore[valid-type]  # the registry's names, for config schemas


def _bins(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
          topk_logprobs: torch.Tensor | None, topk_indices: torch.Tensor | None,
          temperature: float, tail_logprob: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities over the same bins (full vocab, or top-k + tail)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if teacher_logits is not None:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                             f"{tuple(student_logits.shape)} must have the same shape.")
        return F.log_softmax(teacher_logits.float() / temperature, dim=-1), log_q
    if topk_logprobs is None or topk_indices is None:
        raise ValueError("Pass teacher_logits, or both teacher_topk_logprobs and teacher_topk_indices.")
    teacher = _sparse_teacher(topk_logprobs.float(), temperature,
                              None if tail_logprob is None else tail_logprob.float())
    return teacher, _sparse_student(log_q, topk_indices)


def _sparse_teacher(topk_logprobs: torch.Tensor, temperature: float,
                    tail_logprob: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k + tail bins of the teacher at `temperature` (the tail keeps its share of mass)."""
    topk_logprobs = topk_logprobs.detach()  # a teacher signal is a constant
    if tail_logprob is not None:
        # Stored values are rounded (e.g. float16): renormalise so the bins sum to exactly 1.
        bins = torch.cat([topk_logprobs, tail_logprob.detach().clamp_min(LOG_FLOOR)], dim=-1)
        return F.log_softmax(bins / temperature, dim=-1)
    bins = torch.cat([topk_logprobs, _log_tail(topk_logprobs)], dim=-1)
    if temperature != 1.0:
        # The tail's internal shape is unknown; it is re-tempered as if it were one token.
        return F.log_softmax(bins / temperature, dim=-1)
    return bins


def _sparse_student(log_q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The student's log-probabilities at the teacher's top-k tokens, plus its own tail."""
    gathered = log_q.gather(-1, indices.long())
    return torch.cat([gathered, _log_tail(gathered)], dim=-1)


EMPTY_TAIL = 1e-5  # a tail below this is float rounding of Σ top-k, not mass: treat it as empty


def _log_tail(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(log_probs)); an empty tail becomes 1e-30 so values and gradients stay finite."""
    tail = 1.0 - log_probs.exp().sum(-1, keepdim=True)
    return torch.where(tail < EMPTY_TAIL, torch.full_like(tail, 1e-30), tail).log()


def chunked_token_divergence(student_hidden: torch.Tensor, lm_head_weight: torch.Tensor, *,
                             kind: Kind = "forward_kl", teacher_logits: torch.Tensor | None = None,
                             teacher_topk_logprobs: torch.Tensor | None = None,
                             teacher_topk_indices: torch.Tensor | None = None,
                             teacher_tail_logprob: torch.Tensor | None = None,
                             mask: torch.Tensor | None = None, temperature: float = 1.0,
                             jsd_beta: float = 0.5, skew: float = 0.1, chunk_size: int = 1024,
                             lm_head_bias: torch.Tensor | None = None) -> torch.Tensor:
    """`token_divergence` of the student's logits `hidden @ W.T`, never holding all of them at once.

    Tokens are processed `chunk_size` at a time; each chunk's (chunk × vocab) logits are recomputed
    in the backward pass instead of being stored, so peak memory holds one chunk's logits rather
    than (tokens × vocab). The result equals the unchunked masked mean.

    Args:
        student_hidden: (..., d) final hidden states of the student.
        lm_head_weight: (V, d) output projection (and optional `lm_head_bias` (V,)).
        teacher_*: as in `token_divergence`, with the same leading dims as `student_hidden`.
        chunk_size: tokens per chunk.
    """
    def per_token(logits: torch.Tensor, t_logits: torch.Tensor | None, t_lp: torch.Tensor | None,
                  t_idx: torch.Tensor | None, t_tail: torch.Tensor | None) -> torch.Tensor:
        return per_token_divergence(logits, kind=kind, teacher_logits=t_logits, teacher_topk_logprobs=t_lp,
                                    teacher_topk_indices=t_idx, teacher_tail_logprob=t_tail,
                                    temperature=temperature, jsd_beta=jsd_beta, skew=skew)

    weights = _token_weights(student_hidden, mask)
    total = chunked_token_sum(student_hidden, lm_head_weight, per_token,
                              [teacher_logits, teacher_topk_logprobs, teacher_topk_indices, teacher_tail_logprob],
                              weights, chunk_size=chunk_size, lm_head_bias=lm_head_bias, always_chunk=True)
    return total / weights.sum().clamp_min(1.0)


def chunked_token_sum(student_hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                      per_token: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor | None],
                      weights: torch.Tensor, *, chunk_size: int, lm_head_bias: torch.Tensor | None = None,
                      always_chunk: bool = False) -> torch.Tensor:
    """Σ over tokens of weights · per_token(logits, *tensors), chunk by chunk, logits = hidden @ W.T.

    `per_token(logits (n, V), *tensor_chunks)` returns (n,) values, or (n, C) for C components
    summed separately (the result is then (C,)); `tensors` share the leading dims of
    `student_hidden` (None entries pass through). Each chunk's logits are recomputed in backward.
    When all tokens fit in one chunk (and not `always_chunk`), nothing is recomputed. Tokens of
    weight 0 are dropped first (one host sync), so response-only SFT pays the output layer only
    for its response tokens.
    """
    from torch.utils.checkpoint import checkpoint

    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])  # (N, d)
    flat = [None if t is None else t.reshape(len(hidden), -1).detach() if t.dim() > student_hidden.dim() - 1
            else t.reshape(len(hidden)).detach() for t in tensors]
    weights = weights.reshape(-1)
    keep = (weights != 0).nonzero().squeeze(1)  # prompts and padding never reach the output layer
    if len(keep) < len(weights):
        hidden, weights = hidden[keep], weights[keep]
        flat = [None if t is None else t[keep] for t in flat]

    def chunk_sum(h: torch.Tensor, w: torch.Tensor, *chunk: torch.Tensor | None) -> torch.Tensor:
        logits = F.linear(h, lm_head_weight, lm_head_bias)  # (chunk, V): freed after the forward
        *parts, t_w = chunk
        values = per_token(logits, *parts)
        return (values * t_w.view(-1, *[1] * (values.dim() - 1))).sum(0)

    if len(hidden) <= chunk_size and not always_chunk:
        return chunk_sum(hidden, lm_head_weight, *flat, weights)
    total: torch.Tensor | float = hidden.sum().float() * 0.0  # keeps the graph if all tokens are masked
    for start in range(0, len(hidden), chunk_size):
        sl = slice(start, start + chunk_size)
        if not weights[sl].any():
            continue
        parts = [None if t is None else t[sl] for t in flat]
        total = total + checkpoint(chunk_sum, hidden[sl], lm_head_weight, *parts, weights[sl],
                                   use_reentrant=False)
    return total


def _token_weights(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(hidden.shape[:-1], device=hidden.device)
    return mask.to(hidden.device, torch.float32)
