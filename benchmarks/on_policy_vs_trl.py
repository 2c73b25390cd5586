"""On-policy distillation steps per second: `distill task`'s on-policy step vs TRL's DistillationTrainer.

    .venv/bin/pip install trl && python benchmarks/on_policy_vs_trl.py [--steps 6 --rounds 3]

Same teacher (SmolLM2-135M-Instruct, fp32) and student (its first layer, 0.24× the parameters, one
initialisation deep-copied per run), the same 8 prompts per step (`builtin:addition` as both chat
templates write them), answers sampled at temperature 1 to exactly `MAX_NEW` tokens (TRL through
`min_new_tokens`; the untrained student writes no end token either), reverse KL over the full
vocabulary at T = 1 (TRL: beta = 1), AdamW at the same settings, fp32, 2 threads, on an otherwise
idle machine. Arms alternate within each round; each figure is the median over rounds.

A step's window: every step calls the teacher once (ours: `ResponseTeacher.signal`; TRL: a callback
at each step's end), stamped; the window from the 2nd stamp to the last covers `steps` whole steps
(generation, teacher, loss, backward, optimizer), leaving out setup and the first step on both sides.
Tokens per step = 8 × (prompt + MAX_NEW). Key: `onpolicy_tokens_per_s_ratio_vs_trl` (> 1: ours faster),
both teachers in float32. Beside it, `bf16_teacher_ratio_vs_trl`: ours with the teacher scoring in
bfloat16, as `teacher.dtype: auto` chooses on a CPU with AMX/AVX-512 BF16 (TRL's teacher stays float32,
as its trainer loads it when given a model).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from common import write_result  # noqa: E402

TEACHER, BATCH, MAX_NEW, LR = "builtin:smollm2-135m-instruct", 8, 64, 1e-4


def _prompts(n: int):
    from distill.data.builtin_tasks import builtin_task

    return builtin_task("addition", n, 0)


def run_ours(base, teacher, tok, steps: int) -> tuple[float, int]:
    from distill.data.tasks import encode_prompts, prompt_ids
    from distill.losses.config import TokenKDConfig
    from distill.teachers.responses import ResponseTeacher, live_scorer
    from distill.training.config import LMTrainConfig, OnPolicyConfig, OptimizerConfig
    from distill.training.lm import fit_lm

    rows = _prompts(BATCH * (steps + 2))
    blocks = encode_prompts(rows, tok, 160, source="benchmark prompts")
    inner = ResponseTeacher(live_scorer(teacher, len(tok)), [prompt_ids(tok, r.messages) for r in rows],
                            tok.pad_token_id)
    stamps, tokens = [], []

    class Stamped:
        def signal(self, batch):
            stamps.append(time.perf_counter())
            tokens.append(int(batch["attention_mask"].sum()))
            return inner.signal(batch)

    train = LMTrainConfig(steps=steps + 2, batch_size=BATCH, optimizer=OptimizerConfig(lr=LR, weight_decay=0.0),
                          scheduler="none", warmup_steps=0, grad_clip=1.0, eval_every=10**9, save_every=10**9,
                          precision="no")
    fit_lm(copy.deepcopy(base), blocks, train=train, kd=TokenKDConfig(divergence="reverse_kl", ratio=1.0),
           vocab=len(tok), teacher=Stamped(), on_policy=OnPolicyConfig(fraction=1.0, max_new_tokens=MAX_NEW),
           pad_id=tok.pad_token_id, device="cpu", quiet=True)
    return stamps[-1] - stamps[1], sum(tokens[2:])


def run_trl(base, teacher, tok, steps: int, out: str) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from distill.data.tasks import prompt_ids

    rows = _prompts(BATCH * (steps + 2))
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = DistillationConfig(
        output_dir=out, max_steps=steps + 2, per_device_train_batch_size=BATCH, learning_rate=LR, weight_decay=0.0,
        optim="adamw_torch", lr_scheduler_type="constant", max_grad_norm=1.0, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, report_to=[],
        logging_strategy="no", save_strategy="no", eval_strategy="no", shuffle_dataset=False, seed=0,
        max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, beta=1.0,
        generation_kwargs={"min_new_tokens": MAX_NEW})
    data = Dataset.from_list([{"prompt": r.messages} for r in rows])
    trainer = DistillationTrainer(model=copy.deepcopy(base), teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[Stamp()])
    trainer.train()
    per_step = [BATCH * MAX_NEW + sum(len(prompt_ids(tok, r.messages)) for r in rows[s * BATCH:(s + 1) * BATCH])
                for s in range(steps + 2)]
    return stamps[-1] - stamps[1], sum(per_step[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (each run trains 2 more)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from distill.models import causal_lm as lm_models

    hf_logging.set_verbosity_error()
    teacher, tok = lm_models.load_causal_lm(TEACHER).eval(), lm_models.load_tokenizer(TEACHER)
    base = lm_models.student_from_teacher(teacher, layers=[0], seed=0)
    bf16 = copy.deepcopy(teacher).to(torch.bfloat16)
    rates: dict[str, list[float]] = {"ours": [], "trl": [], "ours_bf16": []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            for arm in ("ours", "trl", "ours_bf16"):
                seconds, tokens = run_trl(base, teacher, tok, args.steps, out) if arm == "trl" else \
                    run_ours(base, bf16 if arm == "ours_bf16" else teacher, tok, args.steps)
                rates[arm].append(tokens / seconds)
                print(f"round {r + 1}/{args.rounds} {arm}: {rates[arm][-1]:.0f} tokens/s", flush=True)
    ours, trl, ours_bf16 = (statistics.median(rates[a]) for a in ("ours", "trl", "ours_bf16"))
    write_result("on_policy_vs_trl", {
        "ours_tokens_per_s": ours, "trl_tokens_per_s": trl, "onpolicy_tokens_per_s_ratio_vs_trl": ours / trl,
        "ours_bf16_teacher_tokens_per_s": ours_bf16, "bf16_teacher_ratio_vs_trl": ours_bf16 / trl,
        "ours_spread": (max(rates["ours"]) - min(rates["ours"])) / ours,
        "trl_spread": (max(rates["trl"]) - min(rates["trl"])) / trl,
        "steps": args.steps, "rounds": args.rounds, "batch": BATCH, "max_new_tokens": MAX_NEW})


if __name__ == "__main__":
    main()
