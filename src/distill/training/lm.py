"""Token language models on the training engine: `fit_lm` trains a causal LM for `train.steps` steps.

The task's part of each step: token blocks in a seeded order (or, with probability λ, continuations
the student samples from their first tokens: on-policy, GKD-style), the teacher's signal on them
(from `kd.warm_start` on), and the chunked token loss (`distill.losses.tokens.lm_loss`); every
`eval_every` steps, held-out perplexity and agreement with the teacher. The loss is a module's
forward (`_StepLoss`): under DDP, gradients are all-reduced only for a forward through the wrapper,
and under FSDP (`train.shard=fsdp`) the wrapper is the root whose forward gathers the embedding and
output layer, since the chunked loss calls the decoder and output layer directly.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from distill.core.errors import ConfigError
from distill.data.tokens import TokenBlocks
from distill.eval.lm import evaluate_lm
from distill.losses.config import TokenKDConfig
from distill.losses.tokens import lm_loss
from distill.teachers.output import Teacher, TeacherOutput
from distill.training.tracking import flat_settings
from distill.training import sharding
from distill.training.config import LMTrainConfig, OnPolicyConfig
from distill.training.engine import FitResult, Run
from distill.training.engine import train as run_steps


def fit_lm(model: nn.Module, data: TokenBlocks, *, train: LMTrainConfig, kd: TokenKDConfig, vocab: int,
           teacher: Teacher | None = None, on_policy: OnPolicyConfig | None = None,
           val_data: TokenBlocks | None = None, val_teacher: Teacher | None = None,
           pad_id: int = 0, checkpoint_dir: Path | None = None, resume: bool = False,
           device: str = "auto", quiet: bool = False, name: str = "student",
           evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
           tracking: list[str] | None = None, project: str | None = None) -> FitResult:
    """Train `model` for `train.steps` steps; with `teacher` None (or before `kd.warm_start`), plain
    next-token CE. Every metrics row also counts the tokens the student has read in training
    (`tokens_trained`) and written on-policy (`tokens_generated`) so far, and holds `val_<key>` of
    `evaluate(model)` (e.g. task success) when given."""
    task = LMTask(model, data, train, kd, vocab, teacher, on_policy, val_data, val_teacher, pad_id, name, evaluate)
    tracked = flat_settings({"train": train.model_dump(mode="json"), "kd": kd.model_dump(mode="json")})
    return run_steps(task, Run(checkpoint_dir=checkpoint_dir, resume=resume, device=device, quiet=quiet,
                               tracking=tracking, project=project, tracked=tracked,
                               progress=("train_loss", "val_ppl", "val_success")))


class LMTask:
    """The language model's plug into the engine (`distill.training.engine.Task`)."""

    def __init__(self, model: nn.Module, data: TokenBlocks, train: LMTrainConfig, kd: TokenKDConfig, vocab: int,
                 teacher: Teacher | None, on_policy: OnPolicyConfig | None, val_data: TokenBlocks | None,
                 val_teacher: Teacher | None, pad_id: int, name: str,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None):
        self.model, self.data, self.config, self.kd, self.vocab = model, data, train, kd, vocab
        self.teacher, self.val_data, self.val_teacher, self.pad_id, self.name = teacher, val_data, val_teacher, pad_id, name
        self.sampling = on_policy if on_policy is not None and on_policy.fraction > 0 else None
        self.steps, self.warmup_steps = train.steps, train.warmup_steps
        self.fingerprint = _fingerprint(train, kd, on_policy, teacher is not None, data)
        self.evaluate = evaluate
        self.seen = {"tokens_trained": 0, "tokens_generated": 0}  # every process's, up to the last row or checkpoint
        self.unseen: torch.Tensor | None = None  # (trained, generated) since then, on the device: no host sync per step
        self.step_tokens: torch.Tensor | None = None  # this process's, this step
        self.signal: TeacherOutput | None = None  # the teacher's, when it was asked ahead (prefetch)
        self.prefetch = _Prefetch() if self.sampling is not None and self.sampling.prefetch else None

    def setup(self, acc: Accelerator) -> nn.Module:
        self.acc = acc
        self.sharded = self.config.shard == "fsdp" and acc.num_processes > 1
        self.template = _check_shardable(self.model, self.sampling) if self.sharded else None  # handed back at the end
        self.model = self.model.to(acc.device)
        self.step_loss = sharding.shard(_StepLoss(self.model), acc.device) if self.sharded else _StepLoss(self.model)
        self.order = _BatchOrder(len(self.data), self.config.batch_size, acc.num_processes, acc.process_index,
                                 self.config.seed)
        return self.model

    def prepare(self, acc: Accelerator, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.sharded:  # FSDP reduces the sharded gradients itself: only the optimizer is prepared
            return acc.prepare(optimizer)
        self.step_loss, optimizer = acc.prepare(self.step_loss, optimizer)
        return optimizer

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        self.signal, sampled = None, self._sampled(step)
        if self.prefetch is not None and sampled:
            batch, self.signal = self.prefetch.take(step, self)
            if step + 1 < self.steps and self._sampled(step + 1):
                self.prefetch.start(step + 1, self)  # from the weights before this step's update
        else:
            batch = self._raw(step)
            if sampled:
                batch = self._answer(self.acc.unwrap_model(self.model), batch, step)
        written = batch["loss_mask"].sum() if sampled else batch["loss_mask"].new_zeros(())
        self.step_tokens = torch.stack([batch["attention_mask"].sum(), written]).long()
        return batch

    def _raw(self, step: int) -> dict[str, torch.Tensor]:
        return {k: v.to(self.acc.device, non_blocking=True) for k, v in self.data.batch(self.order.indices(step)).items()}

    def _sampled(self, step: int) -> bool:
        s = self.sampling
        return s is not None and step >= s.start * self.steps and _on_policy_step(self.config.seed, step, s.fraction)

    def _answer(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        s = self.sampling
        assert s is not None
        if "prompt_len" in batch:
            return sample_responses(model, batch, s, self.pad_id, seed=self.config.seed * 1_000_003 + step)
        return sample_continuations(model, batch, s, self.pad_id)

    def _teacher_signal(self, batch: dict[str, torch.Tensor], step: int) -> TeacherOutput | None:
        return self.teacher.signal(batch) if self.teacher is not None and step >= self.kd.warm_start else None

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        self.model.train()
        signal = self.signal if self.signal is not None else self._teacher_signal(batch, step)
        with self.acc.autocast():
            return self.step_loss(batch, signal, self.kd, self.vocab)

    def after_step(self, step: int, sums: dict[str, torch.Tensor], count: int) -> None:
        counts = self.step_tokens
        if self.acc.num_processes > 1:  # every process's tokens, so rows and checkpoints hold the same counts
            counts = self.acc.reduce(counts, "sum")
        self.unseen = counts if self.unseen is None else self.unseen + counts

    def _tokens(self) -> dict[str, int]:
        """The token counts so far (one host sync, at rows and checkpoints only)."""
        if self.unseen is not None:
            trained, generated = self.unseen.tolist()
            self.seen = {"tokens_trained": self.seen["tokens_trained"] + trained,
                         "tokens_generated": self.seen["tokens_generated"] + generated}
            self.unseen = None
        return dict(self.seen)

    def where(self, step: int) -> str:
        return ""

    def row_due(self, done: int) -> bool:
        return done % self.config.eval_every == 0 or done == self.steps

    def save_due(self, done: int) -> bool:
        return done % self.config.save_every == 0 or done == self.steps

    def row(self, done: int) -> dict[str, float]:
        row: dict[str, float] = {"step": done, **self._tokens()}
        if self.val_data is not None or self.evaluate is not None:
            with sharding.gathered_root(self.step_loss if self.sharded else None):
                model = self.acc.unwrap_model(self.model)
                metrics = evaluate_lm(model, self.val_data, self.vocab, teacher=self.val_teacher) \
                    if self.val_data is not None else {}
                metrics.update(self.evaluate(model) if self.evaluate is not None else {})
            row.update({f"val_{k}": v for k, v in metrics.items()})
        return row

    def better(self, row: dict[str, float], best: dict[str, float] | None) -> None:
        return None  # the last step's weights are the result

    def stop(self, result: FitResult) -> bool:
        return False

    def remember_best(self) -> None:
        pass

    def views(self, optimizer: torch.optim.Optimizer, saving: bool) -> tuple[Any, Any]:
        """What checkpoints read and write: the model and optimizer, or under FSDP their whole states."""
        model = self.acc.unwrap_model(self.model)
        if not self.sharded:
            return model, optimizer
        return (sharding.Whole(model, gather=saving), sharding.WholeOptimizer(model, optimizer, gather=saving))

    def state(self, result: FitResult) -> dict[str, Any]:
        return {"seen": self._tokens()}

    def load_state(self, state: dict[str, Any], result: FitResult) -> int:
        self.seen = state.get("seen", self.seen)  # checkpoints from before the counts: from 0
        self.unseen = None
        return int(state["step"])

    def finish(self, result: FitResult, checkpoint_dir: Path | None) -> nn.Module:
        if self.prefetch is not None:
            self.prefetch.close()
        model = sharding.gather(self.model, self.template) if self.sharded else self.acc.unwrap_model(self.model)
        return model.eval()


class _Prefetch:
    """One step ahead: the next on-policy batch's answers, written by a copy of the student taken before
    this step's update, and the teacher's signal on them, made on a background thread while this step
    trains (a generation buffer of one batch). The first step, and the first after a resume, are made
    in place."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="on-policy")
        self.ahead: dict[int, Future] = {}
        self.shadow: nn.Module | None = None

    def start(self, step: int, task: LMTask) -> None:
        model = task.acc.unwrap_model(task.model)
        if self.shadow is None:
            self.shadow = copy.deepcopy(model).eval()
        else:
            with torch.no_grad():
                for mine, theirs in zip(self.shadow.parameters(), model.parameters()):
                    mine.copy_(theirs)
        shadow, raw = self.shadow, task._raw(step)
        self.ahead[step] = self.pool.submit(lambda: self._make(task, shadow, raw, step))

    def take(self, step: int, task: LMTask) -> tuple[dict[str, torch.Tensor], TeacherOutput | None]:
        if step not in self.ahead:
            batch = task._answer(task.acc.unwrap_model(task.model), task._raw(step), step)
            return batch, task._teacher_signal(batch, step)
        return self.ahead.pop(step).result()

    @staticmethod
    def _make(task: LMTask, model: nn.Module, raw: dict[str, torch.Tensor], step: int
              ) -> tuple[dict[str, torch.Tensor], TeacherOutput | None]:
        batch = task._answer(model, raw, step)
        return batch, task._teacher_signal(batch, step)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_shardable(model: nn.Module, on_policy: OnPolicyConfig | None) -> nn.Module:
    """Refuse what FSDP cannot run here; return an unsharded copy of `model` to hand back at the end."""
    if on_policy is not None and on_policy.fraction > 0:
        raise ConfigError("train.shard=fsdp with on_policy.fraction > 0: sampling from a sharded student needs "
                          "every process to generate in lockstep, which is not supported; set "
                          "on_policy.fraction=0 or train.shard=none.")
    if hasattr(model, "peft_config"):
        raise ConfigError("train.shard=fsdp with a LoRA student (student.lora) is not supported; LoRA trains few "
                          "parameters, so train.shard=none (DDP) holds them on every process cheaply.")
    return copy.deepcopy(model).cpu()


def sample_continuations(model: nn.Module, batch: dict[str, torch.Tensor], cfg: OnPolicyConfig,
                         pad_id: int) -> dict[str, torch.Tensor]:
    """Keep each block's first `prompt_tokens` tokens and let the student continue them.

    The loss then counts only the sampled tokens (the teacher scores the student's own text).
    """
    prompt = batch["input_ids"][:, : cfg.prompt_tokens]
    seq_len = batch["input_ids"].shape[1]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                             temperature=cfg.temperature, top_p=cfg.top_p, pad_token_id=pad_id,
                             max_new_tokens=min(cfg.max_new_tokens, seq_len - cfg.prompt_tokens))
    model.train(was_training)
    ids = torch.full_like(batch["input_ids"], pad_id)
    ids[:, : out.shape[1]] = out
    attention = torch.zeros_like(batch["attention_mask"])
    attention[:, : out.shape[1]] = True
    loss_mask = torch.zeros_like(batch["loss_mask"])
    loss_mask[:, cfg.prompt_tokens - 1: out.shape[1] - 1] = True  # positions predicting sampled tokens
    sampled = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask, "index": batch["index"]}
    if "teacher_route" in batch:  # a routed row's continuation learns from its prompt's teacher
        sampled["teacher_route"] = batch["teacher_route"][:, cfg.prompt_tokens - 1: cfg.prompt_tokens].expand_as(ids)
    return sampled


def sample_responses(model: nn.Module, batch: dict[str, torch.Tensor], cfg: OnPolicyConfig, pad_id: int, *,
                     seed: int) -> dict[str, torch.Tensor]:
    """The student answers each row's prompt (its first `prompt_len` tokens) in place of the row's
    response: sampled at `cfg.temperature`/`top_p`, at most `cfg.max_new_tokens` tokens and what the
    block holds, ending at the student's EOS (kept, so stopping is learnt). The loss counts only the
    answer's tokens (the teacher scores the student's own text). Row i's stream is seeded by `seed`
    and its dataset index, so a resumed run samples the same answers."""
    from distill.models.generation import GenerationParams, eos_ids_of, generate_batch

    ids, lengths, index = batch["input_ids"], batch["prompt_len"].tolist(), batch["index"].tolist()
    width = ids.shape[1]
    eos = eos_ids_of(model, None)
    if not eos:
        raise ConfigError("on-policy answers need the student's end-of-answer token: its generation_config has "
                          "no eos_token_id; set model.generation_config.eos_token_id.")
    params = [GenerationParams(max_new_tokens=max(0, min(cfg.max_new_tokens, width - n)), temperature=cfg.temperature,
                               top_p=cfg.top_p, seed=seed * 7_919 + i) for n, i in zip(lengths, index)]
    was_training = model.training
    model.eval()
    answers = generate_batch(model, [ids[r, :n].tolist() for r, n in enumerate(lengths)], params, pad_id=pad_id,
                             eos_ids=eos)
    model.train(was_training)
    out_ids = torch.full_like(ids, pad_id)
    attention = torch.zeros_like(batch["attention_mask"])
    loss_mask = torch.zeros_like(batch["loss_mask"])
    for r, (n, answer) in enumerate(zip(lengths, answers)):
        tokens = answer.token_ids + ([answer.stop_token] if answer.stop_token is not None else [])
        tokens = tokens[: width - n]
        out_ids[r, :n] = ids[r, :n]
        out_ids[r, n: n + len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
        attention[r, : n + len(tokens)] = True
        loss_mask[r, n - 1: n + len(tokens) - 1] = True  # positions predicting the answer's tokens
    return {**batch, "input_ids": out_ids, "attention_mask": attention, "loss_mask": loss_mask}


class _StepLoss(nn.Module):
    """`lm_loss` of the student as a module's forward, so that DDP can wrap it."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, batch: dict[str, torch.Tensor], signal: TeacherOutput | None, cfg: TokenKDConfig,
                vocab: int) -> dict[str, torch.Tensor]:
        return lm_loss(self.student, batch, signal, cfg, vocab)


class _BatchOrder:
    """Step → this rank's block indices: a seeded permutation per pass over the data, dropping the remainder."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int):
        self.n, self.global_batch, self.world, self.rank, self.seed = n, batch_size * world, world, rank, seed
        self.per_pass = max(1, n // self.global_batch)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_pass)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        perm = perm.repeat(-(-self.global_batch // self.n))  # tiny datasets: wrap around
        chunk = perm[pos * self.global_batch: (pos + 1) * self.global_batch]
        return chunk[self.rank:: self.world]


def tokens_seen(data: TokenBlocks, train: LMTrainConfig, processes: int = 1) -> int:
    """The real (unpadded) tokens of every block the engine draws over `train.steps` steps on
    `processes` processes: what a student trained on, padding not counted."""
    order = _BatchOrder(len(data), train.batch_size * processes, 1, 0, train.seed)  # the global batches
    per_block = data.attention_mask.sum(1)
    return int(sum(int(per_block[order.indices(step)].sum()) for step in range(train.steps)))


def _on_policy_step(seed: int, step: int, fraction: float) -> bool:
    """Whether `step` samples from the student: seeded by step, so a resumed run makes the same choice."""
    return bool(torch.rand(1, generator=torch.Generator().manual_seed(seed * 7_919 + step)) < fraction)


def _on_policy_key(on_policy: OnPolicyConfig | None) -> dict | None:
    """The on-policy settings in the fingerprint; `start` and `prefetch` only when set, so runs from
    before them keep theirs."""
    if on_policy is None:
        return None
    unset = {k for k, default in (("start", 0), ("prefetch", False)) if getattr(on_policy, k) == default}
    return on_policy.model_dump(mode="json", exclude=unset or None)


def _fingerprint(train: LMTrainConfig, kd: TokenKDConfig, on_policy: OnPolicyConfig | None,
                 has_teacher: bool, data: TokenBlocks) -> str:
    parts = [train.model_dump(mode="json"), _kd_key(kd),
             _on_policy_key(on_policy), has_teacher, data.fingerprint()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _kd_key(kd: TokenKDConfig) -> dict[str, Any]:
    """The kd settings under the names they had when the first runs were fingerprinted (`kind`, `beta`,
    `alpha`), so that runs started before the names were unified still resume."""
    old = {"divergence": "kind", "jsd_beta": "beta", "skew": "alpha"}
    return {old.get(k, k): v for k, v in kd.model_dump(mode="json").items()}
