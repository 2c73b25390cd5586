"""A teacher that reads each answer after its own prompt: the signal for answers to prompts.

The student's batch holds its prompt and an answer (its own sample, on-policy, or a written one);
the teacher scores the same answer tokens after *its* prompt for that row, which may say more than
the student's: privileged context (instructions, examples, a document the student will not see), or
another chat template. Position t of the student's row predicts token t + 1; the answer's tokens sit
at the same offsets after both prompts, so the teacher's signal moves by the difference of the two
prompt lengths.

    teacher = ResponseTeacher(live_scorer(model, vocab), teacher_prompts, pad_id)   # in this process
    teacher = ResponseTeacher(endpoint_scorer(EndpointTopK(...)), teacher_prompts, pad_id)  # a server
    teacher.signal(batch)   # batch: input_ids, attention_mask, prompt_len, index
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from distill.teachers.output import TeacherOutput
from distill.teachers.tokens import teacher_logits

Scorer = Callable[[torch.Tensor, torch.Tensor], TeacherOutput]  # (ids (B, T), lengths (B,)) -> output over (B, T)


class ResponseTeacher:
    def __init__(self, scorer: Scorer, prompts: list[list[int]], pad_id: int):
        self.scorer, self.prompts, self.pad_id = scorer, prompts, pad_id

    @torch.no_grad()
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        ids, student_prompt = batch["input_ids"], batch["prompt_len"]
        ends = batch["attention_mask"].sum(1)
        rows, teacher_prompt = [], []
        for r, i in enumerate(batch["index"].tolist()):
            prompt = self.prompts[i]
            rows.append(prompt + ids[r, int(student_prompt[r]): int(ends[r])].tolist())
            teacher_prompt.append(len(prompt))
        width = max(len(row) for row in rows)
        t_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        for r, row in enumerate(rows):
            t_ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        out = self.scorer(t_ids.to(ids.device), torch.tensor([len(row) for row in rows], device=ids.device))
        shift = torch.tensor(teacher_prompt, device=ids.device) - student_prompt  # (B,)
        where = (torch.arange(ids.shape[1], device=ids.device) + shift[:, None]).clamp(0, width - 1)  # (B, L)
        return _at(out, where)


def live_scorer(model: nn.Module, vocab: int) -> Scorer:
    """The teacher in this process: full logits."""
    model.eval().requires_grad_(False)

    def score(ids: torch.Tensor, lengths: torch.Tensor) -> TeacherOutput:
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
        return TeacherOutput(logits=teacher_logits(model, {"input_ids": ids, "attention_mask": mask}, vocab))

    return score


def endpoint_scorer(endpoint: object, *, sampled: bool = False) -> Scorer:
    """A teacher behind an OpenAI-compatible server (`distill.teachers.endpoint.EndpointTopK`): its top-k,
    or (`sampled`) only the log-prob of each token of the answer, for servers that return no alternatives."""
    def score(ids: torch.Tensor, lengths: torch.Tensor) -> TeacherOutput:
        ask = endpoint.sampled_rows if sampled else endpoint.rows  # type: ignore[attr-defined]
        lp, idx, tail = ask(ids.cpu(), lengths.cpu())
        return TeacherOutput(topk_logprobs=lp.to(ids.device), topk_indices=idx.to(ids.device),
                             tail_logprob=tail.to(ids.device), sampled=sampled)

    return score


def _at(out: TeacherOutput, where: torch.Tensor) -> TeacherOutput:
    """`out` (B, T, ...) read at positions `where` (B, L)."""
    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.gather(1, where[..., None].expand(*where.shape, t.shape[-1]))

    return TeacherOutput(logits=take(out.logits), topk_logprobs=take(out.topk_logprobs),
                         topk_indices=take(out.topk_indices), tail_logprob=take(out.tail_logprob), sampled=out.sampled)
