"""Several language-model teachers sharing one tokenizer, as one teacher signal.

    teacher = MixedLMTeacher({"news": news_cache, "bible": bible_cache}, weights={"news": 1, "bible": 1})
    teacher.signal(batch)   # TeacherOutput.mixture: each teacher's output and its weight at each token

Each teacher is any signal (a top-k cache, local or built through an endpoint, or a live model), so
several teachers share the cache format of one. The loss weighs each teacher's divergence by its
weight at the token (`distill.losses.tokens.lm_loss`); for the forward KL this equals the KL to the
mixture of their distributions, up to a constant.

Weights at a token:
  * fixed       the configured weights, normalised;
  * confidence  the configured weights × each teacher's probability of the token that actually comes
                next, normalised: the teachers that knew the text count more where they knew it
                (a teacher whose top-k misses the token is credited with its k-th probability, an upper
                bound of what it gave);
  * a route     where the batch has `teacher_route` (per token: a teacher's position in the list, or −1),
                that teacher alone; −1 keeps the weights above (`distill.data.tokens.RoutedBlocks`).
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.teachers.output import Teacher, TeacherOutput

Weighting = Literal["fixed", "confidence"]


class MixedLMTeacher:
    """One signal from several teachers, weighed per token (see the module docstring)."""

    def __init__(self, teachers: dict[str, Teacher], weights: dict[str, float], weighting: Weighting = "fixed"):
        if not teachers:
            raise ValueError("MixedLMTeacher needs at least one teacher")
        if set(weights) != set(teachers) or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights {weights} must give each of {list(teachers)} a weight >= 0, not all 0")
        self.names = list(teachers)
        self.teachers = [teachers[n] for n in self.names]
        self.weights = torch.tensor([float(weights[n]) for n in self.names])
        self.weighting = weighting

    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        outputs = [t.signal(batch) for t in self.teachers]
        ids = batch["input_ids"]
        w = self.weights.to(ids.device).expand(*ids.shape, len(outputs)).clone()  # (B, L, n)
        if self.weighting == "confidence":
            w = w * torch.stack([next_token_prob(out, ids) for out in outputs], -1)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        route = batch.get("teacher_route")
        if route is not None:
            routed = route >= 0
            one_hot = torch.nn.functional.one_hot(route.clamp_min(0), len(outputs)).to(w.dtype)
            w = torch.where(routed[..., None], one_hot, w)
        return TeacherOutput.mixture(outputs, w)


def next_token_prob(out: TeacherOutput, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L): the teacher's probability of the token after each position (the last position's is
    unused); for a top-k output, its k-th probability where the token is not among the k."""
    labels = torch.roll(input_ids, -1, dims=1)
    if out.logits is not None:
        return out.logits.float().log_softmax(-1).gather(-1, labels[..., None])[..., 0].exp()
    lp, idx = out.topk_logprobs.float(), out.topk_indices
    hit = idx == labels[..., None]
    found = (lp.masked_fill(~hit, float("-inf"))).amax(-1)
    bound = lp.amin(-1)
    return torch.where(hit.any(-1), found, bound).exp()
