"""The LM distillation loop: step-based, on Accelerate, resumable from its last checkpoint.

Each step takes a batch of token blocks (or, with probability λ, continuations the student samples
from their first tokens: on-policy, GKD-style), asks the teacher signal for its distributions,
and minimises `distill.losses.tokens.lm_loss`. Every `save_every` steps, weights + optimizer +
scheduler + RNG go atomically to `last.safetensors`; `resume=True` continues bit-for-bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from distill.core.checkpoint import load_training_state, save_training_state
from distill.core.errors import CheckpointError, ConfigError, TrainingDiverged
from distill.core.files import atomic_write_text
from distill.data.tokens import TokenBlocks
from distill.eval.lm import evaluate_lm
from distill.losses.config import TokenKDConfig
from distill.losses.tokens import lm_loss
from distill.teachers.output import TeacherOutput
from distill.teachers.tokens import TokenTeacher
from distill.training import sharding
from distill.training.config import LMTrainConfig, OnPolicyConfig
from distill.training.engine import make_accelerator, make_optimizer, warmup_schedule


@dataclass
class LMFitResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)


def fit_lm(model: nn.Module, data: TokenBlocks, *, train: LMTrainConfig, kd: TokenKDConfig, vocab: int,
           teacher: TokenTeacher | None = None, on_policy: OnPolicyConfig | None = None,
           val_data: TokenBlocks | None = None, val_teacher: TokenTeacher | None = None,
           pad_id: int = 0, checkpoint_dir: Path | None = None, resume: bool = False,
           device: str = "auto", quiet: bool = False, name: str = "student") -> LMFitResult:
    """Train `model` for `train.steps` steps; with `teacher` None (or before `kd.warm_start`), plain
    next-token CE."""
    acc = make_accelerator(device, train.precision, None, None)
    torch.manual_seed(train.seed)
    sharded = train.shard == "fsdp" and acc.num_processes > 1
    template = _check_shardable(model, on_policy) if sharded else None  # the whole model, handed back at the end
    model = model.to(acc.device)
    # The loss is a module's forward (`_StepLoss`): under DDP, gradients are all-reduced only for a
    # forward through the wrapper, and under FSDP the wrapper is the root whose forward gathers the
    # embedding and output layer, since the chunked loss calls the decoder and output layer directly.
    step_loss = sharding.shard(_StepLoss(model), acc.device) if sharded else _StepLoss(model)
    optimizer = make_optimizer(model, train)  # type: ignore[arg-type]  (reads .optimizer only)
    scheduler = warmup_schedule(optimizer, total=train.steps, warmup=train.warmup_steps, kind=train.scheduler)
    if sharded:  # FSDP reduces the sharded gradients itself: only the optimizer is prepared
        optimizer = acc.prepare(optimizer)
    else:
        step_loss, optimizer = acc.prepare(step_loss, optimizer)
    result = LMFitResult(model=model)
    fingerprint = _fingerprint(train, kd, on_policy, teacher is not None, data)
    views = _Views(acc.unwrap_model(model), optimizer, sharded)
    start = _restore(checkpoint_dir, *views.loading(), scheduler, result, fingerprint) if resume else 0
    order = _BatchOrder(len(data), train.batch_size, acc.num_processes, acc.process_index, train.seed)
    sampling = on_policy if on_policy is not None and on_policy.fraction > 0 else None
    sums: dict[str, torch.Tensor] = {}  # summed on the device: the loop never waits for the host
    bar = tqdm(range(start, train.steps), desc=name, unit="step", initial=start, total=train.steps,
               disable=quiet or not acc.is_main_process)
    for step in bar:
        model.train()
        batch = {k: v.to(acc.device, non_blocking=True) for k, v in data.batch(order.indices(step)).items()}
        if sampling is not None and step >= sampling.start * train.steps and \
                _on_policy_step(train.seed, step, sampling.fraction):
            batch = sample_continuations(acc.unwrap_model(model), batch, sampling, pad_id)
        signal = teacher.signal(batch) if teacher is not None and step >= kd.warm_start else None
        with acc.autocast():
            parts = step_loss(batch, signal, kd, vocab)
        acc.backward(parts["loss"])
        if train.grad_clip:
            acc.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        done = step + 1
        evaluate = done % train.eval_every == 0 or done == train.steps
        save = checkpoint_dir is not None and (done % train.save_every == 0 or done == train.steps)
        if evaluate or save:  # the mean over processes is linear, so partial sums may be reduced again
            sums = {k: acc.reduce(v, "mean") for k, v in sums.items()}
            _check_finite(sums["loss"], name, done)  # before a checkpoint could keep bad weights
        if evaluate:
            row = {"step": done, **{f"train_{k}": float(v) / _since(done, train.eval_every) for k, v in sums.items()}}
            if val_data is not None:
                with sharding.gathered_root(step_loss if sharded else None):
                    row.update({f"val_{k}": v for k, v in evaluate_lm(acc.unwrap_model(model), val_data, vocab,
                                                                      teacher=val_teacher).items()})
            result.history.append(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_ppl")})
            sums = {}
        if save:
            whole = views.saving()  # under FSDP, every process gathers; the main one writes
            if acc.is_main_process:
                _save(checkpoint_dir, *whole, scheduler, result, done, fingerprint)
    result.model = (sharding.gather(model, template) if sharded else acc.unwrap_model(model)).eval()
    return result


class _Views:
    """What checkpoints read and write: the model and optimizer, or under FSDP their whole states."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool):
        self.model, self.optimizer, self.sharded = model, optimizer, sharded

    def loading(self) -> tuple[Any, Any]:
        if not self.sharded:
            return self.model, self.optimizer
        return (sharding.Whole(self.model, gather=False),
                sharding.WholeOptimizer(self.model, self.optimizer, gather=False))

    def saving(self) -> tuple[Any, Any]:
        if not self.sharded:
            return self.model, self.optimizer
        return sharding.Whole(self.model), sharding.WholeOptimizer(self.model, self.optimizer)


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
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask, "index": batch["index"]}


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


def _on_policy_step(seed: int, step: int, fraction: float) -> bool:
    """Whether `step` samples from the student: seeded by step, so a resumed run makes the same choice."""
    return bool(torch.rand(1, generator=torch.Generator().manual_seed(seed * 7_919 + step)) < fraction)


def _check_finite(loss_sum: torch.Tensor, name: str, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(f"{name}: the loss became NaN/inf before step {step}; the last checkpoint is kept. "
                               "Lower train.optimizer.lr or set train.grad_clip.")


def _since(done: int, every: int) -> int:
    return every if done % every == 0 else done % every


def _save(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
          result: LMFitResult, step: int, fingerprint: str) -> None:
    state = {"epoch": step, "step": step, "history": result.history, "fingerprint": fingerprint}
    # metrics before the checkpoint: a kill between the two repeats these steps on resume (and rewrites
    # their rows); the other order could leave a finished run's last rows missing for good
    atomic_write_text(ckpt_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
    save_training_state(ckpt_dir / "last.safetensors", model=model, optimizer=optimizer, scheduler=scheduler,
                        state=state)


def _restore(ckpt_dir: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
             result: LMFitResult, fingerprint: str) -> int:
    path = ckpt_dir / "last.safetensors" if ckpt_dir else None
    if path is None or not path.is_file():
        return 0
    state = load_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler)
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(f"{path} was written with different training settings or data; resume with the "
                              "same config, or start a new run (another name / output_dir).")
    result.history = state["history"]
    return int(state["step"])


def _on_policy_key(on_policy: OnPolicyConfig | None) -> dict | None:
    """The on-policy settings in the fingerprint; `start` only when set, so runs from before it keep theirs."""
    if on_policy is None:
        return None
    return on_policy.model_dump(mode="json", exclude={"start"} if on_policy.start == 0 else None)


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
