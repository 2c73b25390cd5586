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

A teacher with another tokenizer (`CrossResponseTeacher`) reads the answer's *text*, tokenized its
own way, after its own prompt; its top-k counts at the student's positions where both have read the
same characters (`distill.teachers.cross`), in the student's ids, its end-of-turn tokens meaning the
student's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distill.data.alignment import aligned_positions, with_ends
from distill.teachers.cross import DECODE, at_student_positions, student_ends
from distill.teachers.output import TeacherOutput
from distill.teachers.tokens import teacher_logits, topk_of

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


class CrossResponseTeacher:
    def __init__(self, model: nn.Module, teacher_tokenizer: Any, student_tokenizer: Any, vocab_map: torch.Tensor,
                 prompts: list[list[int]], *, k: int, vocab: int, teacher_eos: set[int]):
        self.model = model.eval().requires_grad_(False)
        self.teacher_tok, self.student_tok, self.prompts, self.k, self.vocab = (teacher_tokenizer, student_tokenizer,
                                                                                 prompts, k, vocab)
        self.vocab_map = vocab_map.clone()
        self.student_eos = student_tokenizer.eos_token_id
        for token in teacher_eos:  # its end of turn is the student's: stopping is learnt across vocabularies
            self.vocab_map[token] = self.student_eos

    @torch.no_grad()
    def signal(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        ids, ends = batch["input_ids"], batch["attention_mask"].sum(1).tolist()
        rows, position = [], torch.full(ids.shape, -1, dtype=torch.long)
        for r, i in enumerate(batch["index"].tolist()):
            start = int(batch["prompt_len"][r])
            answer = ids[r, start: ends[r]].tolist()
            if answer and answer[-1] == self.student_eos:  # aligned by its text; the last text token predicts it
                answer = answer[:-1]
            student = student_ends(self.student_tok, answer)
            teacher = with_ends(self.teacher_tok, self.student_tok.decode(answer, **DECODE))
            prompt = self.prompts[i]
            rows.append(prompt + teacher.ids)
            position[r, start - 1] = len(prompt) - 1  # both have read their prompt: the first answer token
            for j, t in aligned_positions(student, teacher):
                position[r, start + j] = len(prompt) + t
        width = max(len(row) for row in rows)
        t_ids = torch.full((len(rows), width), self.teacher_tok.pad_token_id, dtype=torch.long)
        t_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, row in enumerate(rows):
            t_ids[r, : len(row)], t_mask[r, : len(row)] = torch.tensor(row, dtype=torch.long), True
        device = next(self.model.parameters()).device
        logits = teacher_logits(self.model, {"input_ids": t_ids.to(device), "attention_mask": t_mask.to(device)},
                                self.vocab)
        lp, idx, tail = topk_of(logits, self.k)
        return at_student_positions(TeacherOutput(topk_logprobs=lp, topk_indices=idx, tail_logprob=tail),
                                     position.to(ids.device), self.vocab_map)


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
