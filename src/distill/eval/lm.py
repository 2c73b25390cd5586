"""Held-out metrics of a causal LM: perplexity, bits per byte (comparable across tokenizers), and
fidelity to a teacher (KL, top-1 agreement)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill.data.tokens import TokenBlocks
from distill.losses.divergences import per_token_divergence
from distill.teachers.output import Teacher, TeacherOutput


def target_bytes(data: TokenBlocks, tokenizer: Any) -> int:
    """UTF-8 bytes of the text the blocks' targets spell (the tokens after `loss_mask` positions,
    special tokens left out): the denominator of bits per byte, the same for any tokenizer."""
    return int(block_bytes(data, tokenizer).sum())


def block_bytes(data: TokenBlocks, tokenizer: Any) -> torch.Tensor:
    """`target_bytes` of each block, (N,)."""
    labels = torch.roll(data.input_ids, -1, dims=1)
    return torch.tensor([len(tokenizer.decode(labels[i][data.loss_mask[i]].tolist(), skip_special_tokens=True)
                             .encode("utf-8")) for i in range(len(data))], dtype=torch.float64)


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: TokenBlocks, vocab: int, *, teacher: Teacher | None = None,
                batch_size: int = 8, progress: str | None = None, text_bytes: int | None = None,
                block_ce: list[float] | None = None) -> dict[str, float]:
    """Mean next-token CE and perplexity over `loss_mask` tokens; with `text_bytes` (`target_bytes` of
    `data`), bits per byte: the summed CE in bits over the bytes of that text, which students with
    different vocabularies share; with a teacher, also the forward KL(teacher ‖ model) (over top-k +
    tail bins for a cached teacher) and top-1 agreement. `progress`: the label of a progress bar over
    the blocks (none when None). `block_ce`, when given, receives each block's summed CE (nats), for
    paired tests over blocks or documents (`distill.eval.verdict.compare_bits`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = {"ce": 0.0, "kl_teacher": 0.0, "agreement": 0.0}
    tokens = 0
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None):
        batch = {k: v.to(device) for k, v in data.batch(torch.arange(start, min(len(data), start + batch_size))).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab].float()
        mask = batch["loss_mask"]
        labels = torch.roll(batch["input_ids"], -1, dims=1)
        token_ce = F.cross_entropy(logits.transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none") * mask
        totals["ce"] += float(token_ce.sum())
        if block_ce is not None:
            block_ce.extend(token_ce.sum(1).tolist())
        tokens += int(mask.sum())
        if teacher is not None:
            kl, top1 = _to_teacher(logits, teacher.signal(batch))
            totals["kl_teacher"] += float(kl[mask].sum())
            totals["agreement"] += float((logits.argmax(-1) == top1)[mask].sum())
    model.train(was_training)
    n = max(1, tokens)
    out = {"ce": totals["ce"] / n, "ppl": math.exp(totals["ce"] / n)}
    if text_bytes:
        out["bpb"] = totals["ce"] / math.log(2) / text_bytes
    if teacher is not None:
        out.update(kl_teacher=totals["kl_teacher"] / n, agreement=totals["agreement"] / n)
    return out


def _to_teacher(logits: torch.Tensor, signal: TeacherOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: forward KL(teacher ‖ model) (several teachers: weighed as in training) and the teacher's
    top-1 id (several: that of the teacher weighing most there)."""
    kls, tops, weights = [], [], []
    for out, w in signal.components():
        kls.append(per_token_divergence(logits, kind="forward_kl", **out.as_kwargs()))
        tops.append(out.logits.argmax(-1) if out.logits is not None else out.topk_indices[..., 0])
        weights.append(torch.ones_like(kls[-1]) if w is None else w)
    w = torch.stack(weights, -1)
    return (torch.stack(kls, -1) * w).sum(-1), torch.stack(tops, -1).gather(-1, w.argmax(-1, keepdim=True))[..., 0]


def evaluate_logprobs(token_logprobs: list[list[float]], data: TokenBlocks, text_bytes: int | None = None
                      ) -> dict[str, float]:
    """`evaluate_lm`'s CE, perplexity and bits per byte from a model's log-probs of each block's real
    tokens after the first (`distill.teachers.endpoint.EndpointTopK.token_logprobs`): a served model."""
    ce, tokens = 0.0, 0
    for i, lps in enumerate(token_logprobs):
        mask = data.loss_mask[i, : len(lps)]  # position t predicts token t + 1, whose log-prob is lps[t]
        ce -= math.fsum(lp for lp, m in zip(lps, mask.tolist()) if m)
        tokens += int(mask.sum())
    n = max(1, tokens)
    out = {"ce": ce / n, "ppl": math.exp(ce / n)}
    if text_bytes:
        out["bpb"] = ce / math.log(2) / text_bytes
    return out
