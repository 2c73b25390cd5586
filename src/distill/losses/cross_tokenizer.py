"""Distillation between models with different vocabularies, at aligned positions
(`distill.data.alignment`), from the teacher's top-k log-probs and tail mass (the LM cache's signal).

    uld(student_logits, topk_logprobs, tail_logprob)                   # alignment-free in vocabulary
    matched_kl(student_logits, topk_logprobs, tail_logprob, student_ids)  # shared tokens share mass

`uld` is Universal Logit Distillation (Boizard et al. 2024): the Wasserstein-1 distance between the
two next-token distributions under a cost that ignores which token is which, computed as the L1
distance between their probabilities sorted in decreasing order; here the teacher's k largest
against the student's k largest, plus the difference of the remaining masses. `matched_kl` is the
exact-match part of GOLD / DSKD-style alignment: the teacher's top-k tokens that the student's
vocabulary spells identically (`student_ids`, -1 where none) keep their probability; everything
else (unmatched tokens and the tail) is one bin; KL(teacher ‖ student) over those bins.

Hand-written: TRL's GOLD trainer implements these inside its trainer, not as losses one can call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def uld(student_logits: torch.Tensor, topk_logprobs: torch.Tensor, tail_logprob: torch.Tensor) -> torch.Tensor:
    """Per position (N,): Σ |sorted student probs − sorted teacher probs| over the top k, + |tail difference|.

    student_logits (N, V_s); topk_logprobs (N, k) the teacher's, any order; tail_logprob (N, 1).
    """
    k = topk_logprobs.shape[-1]
    student = F.softmax(student_logits.float(), dim=-1)
    top_s = student.topk(min(k, student.shape[-1]), dim=-1).values  # (N, k), decreasing
    top_t = topk_logprobs.float().exp().sort(dim=-1, descending=True).values
    if top_s.shape[-1] < k:  # a student vocabulary smaller than k: its missing probabilities are 0
        top_s = F.pad(top_s, (0, k - top_s.shape[-1]))
    tail_s = (1 - top_s.sum(-1)).clamp_min(0)
    tail_t = tail_logprob.float().exp().squeeze(-1)
    return (top_s - top_t).abs().sum(-1) + (tail_s - tail_t).abs()


def matched_kl(student_logits: torch.Tensor, topk_logprobs: torch.Tensor, tail_logprob: torch.Tensor,
               student_ids: torch.Tensor) -> torch.Tensor:
    """Per position (N,): KL(teacher ‖ student) over the matched top-k tokens and one bin for the rest.

    student_ids (N, k): the student id spelling each of the teacher's top-k tokens, -1 where none.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)  # (N, V_s)
    matched = student_ids >= 0
    log_p = topk_logprobs.float().masked_fill(~matched, float("-inf"))  # (N, k)
    log_q_matched = log_q.gather(-1, student_ids.clamp_min(0)).masked_fill(~matched, float("-inf"))
    rest_p = _log1mexp(torch.logsumexp(log_p, dim=-1))  # unmatched teacher tokens and the tail together
    rest_q = _log1mexp(torch.logsumexp(log_q_matched, dim=-1))
    bins_p = torch.cat([log_p, rest_p[:, None]], dim=-1)
    bins_q = torch.cat([log_q_matched, rest_q[:, None]], dim=-1)
    p = bins_p.exp()
    return (p * (bins_p - bins_q)).nan_to_num(0.0).sum(-1)  # 0·log 0 = 0 where a bin is empty


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable at both ends; −1e3 (as the cache's floor) when x is 0."""
    x = x.clamp(max=0)
    out = torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(-1e3)


CROSS = {"uld": lambda logits, lp, tail, ids: uld(logits, lp, tail),
         "matched": lambda logits, lp, tail, ids: matched_kl(logits, lp, tail, ids),
         "matched_uld": lambda logits, lp, tail, ids: matched_kl(logits, lp, tail, ids) + uld(logits, lp, tail)}


def cross_divergence(method: str, student_logits: torch.Tensor, topk_logprobs: torch.Tensor,
                     tail_logprob: torch.Tensor, student_ids: torch.Tensor) -> torch.Tensor:
    """Per position (N,): `method` ("uld", "matched", or their sum "matched_uld") at aligned positions."""
    if method not in CROSS:
        raise ValueError(f"Unknown cross-tokenizer method `{method}`; choose one of {list(CROSS)}.")
    return CROSS[method](student_logits, topk_logprobs, tail_logprob, student_ids)
