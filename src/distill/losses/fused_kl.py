"""Forward and reverse KL over full vocabularies as one autograd step: the gradient is formed while
the value is, and only it is kept for the backward pass.

    per_token = full_kl(student_logits, teacher_logits, temperature=1.0, reverse=True)   # (...,)

Written out by `distill.losses.divergences.kl`, a token-level KL over a 49k vocabulary is a chain
of (tokens × V) tensors that autograd keeps and walks back through (two log-softmaxes, two floors,
an exponential, a difference, a product): memory traffic and memory that grow with the vocabulary
(benchmarks/results/fused_kl.json: 1.62× faster for reverse KL, 1.19× for forward KL, at 512
tokens × 49,152 on a CPU). The closed forms are short — with q = softmax(z / T) the student
and p the (constant) teacher,

    ∂ KL(p ‖ q) / ∂z = (q − p) / T
    ∂ KL(q ‖ p) / ∂z = q ⊙ (log q − log p − KL(q ‖ p)) / T

— so this function computes them beside the value and saves one (tokens × V) tensor. Liger
Kernel's fused losses do the same on GPUs in Triton; nothing maintained does it for CPU tensors,
hence this file. Values and gradients equal the written-out form (tests compare both, with masked
vocabularies and temperatures), with one deliberate difference: where the student's log-probability
is below LOG_FLOOR, the written-out forward KL's floor stops the gradient, and this one keeps the
true q − p, which pushes the student back towards a token the teacher gives mass.
`divergences.per_token_divergence` routes full-logit forward and reverse KL here when the teacher's
logits carry no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

LOG_FLOOR = -1e3  # log-probabilities are floored here (and in distill.losses.divergences): exp(-1e3) == 0


class _FullKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                reverse: bool) -> torch.Tensor:
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1).clamp_min_(LOG_FLOOR)
        log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1).clamp_min_(LOG_FLOOR)
        q = log_q.exp()
        if reverse:  # KL(q ‖ p) = Σ q (log q − log p)
            diff = log_q.sub_(log_p)  # log_q is not needed again
            value = (q * diff).sum(-1)
            grad = q.mul_(diff.sub_(value.unsqueeze(-1))) if ctx.needs_input_grad[0] else None
        else:  # KL(p ‖ q) = Σ p (log p − log q)
            p = log_p.exp()
            value = (p * (log_p - log_q)).sum(-1)
            grad = q.sub_(p) if ctx.needs_input_grad[0] else None
        if grad is not None:
            ctx.save_for_backward(grad.div_(temperature))
            ctx.input_dtype = student_logits.dtype
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative is refused, not silently zero
    def backward(ctx: Any, grad_value: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_value.unsqueeze(-1)).to(ctx.input_dtype), None, None, None


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
            reverse: bool = False) -> torch.Tensor:
    """Per-position KL(p ‖ q) (or KL(q ‖ p) with `reverse`) between softmax(teacher / T) = p and
    softmax(student / T) = q, over the last dim; gradients reach the student's logits only."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must have the same shape.")
    return _FullKL.apply(student_logits, teacher_logits.detach(), float(temperature), bool(reverse))
