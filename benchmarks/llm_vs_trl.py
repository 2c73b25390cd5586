"""Training throughput (tokens/s) of distill's LM distillation vs TRL's GKDTrainer, side by side.

Run: python benchmarks/llm_vs_trl.py     (--steps 8 --rounds 3 --blocks 64; 5 arms × rounds × (steps + 2)
     training steps, plus a one-off top-64 teacher cache under benchmarks/work/llm_vs_trl/)

Same teacher (SmolLM2-135M-Instruct, fp32), same from-scratch student (~17M parameters, one init
deep-copied per run), same KJV token blocks, batch 4 × 128, AdamW (lr 5e-4, wd 0.01, grad clip 1,
constant lr), fp32 on CPU with 2 threads. Arms: TRL GKD (lmbda=0: off-policy, no generation) with
forward KL and with JSD(0.5); ours (`fit_lm`) with a live teacher (forward KL, JSD(0.5)) and with
a top-64 teacher cache built beforehand (forward KL). Each round runs every arm once, in order;
each figure is the median over rounds. ratio > 1 means ours is faster.

Timing: each run trains steps + 2 steps; a forward pre-hook on the student's decoder (called once
per step on both sides; an extra call, e.g. a generation, fails the run) stamps each step, and the
window from step 2's stamp to the last stamp covers `steps` whole steps. Setup (Trainer / Accelerator
/ optimizer construction) and the whole first step (warm-up, optimizer-state allocation) are left out
on both sides. Before timing, both losses are evaluated on one batch (written under "loss_check").
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import common  # noqa: E402
import torch  # noqa: E402
from common import WORK, write_result  # noqa: E402

from distill.data.tokens import TokenBlocks, pack_text, read_kjv  # noqa: E402
from distill.losses.tokens import (
    TokenKDConfig,
    lm_loss,  # noqa: E402
)
from distill.models import causal_lm as lm_models  # noqa: E402
from distill.teachers.tokens import LiveLMTeacher, TopKCache  # noqa: E402
from distill.training.config import (
    LMTrainConfig,  # noqa: E402
    OptimizerConfig,  # noqa: E402
)
from distill.training.lm import fit_lm  # noqa: E402

NAME, TEACHER, SEQ_LEN, BATCH, TOP_K, LR, WD = "llm_vs_trl", "builtin:smollm2-135m-instruct", 128, 4, 64, 5e-4, 0.01
STUDENT = {"num_hidden_layers": 6, "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4,
           "num_key_value_heads": 2}
# TRL's GKDTrainer.generalized_jsd_loss: beta=0 → F.kl_div(student_lp, teacher_lp, log_target=True)
# = KL(teacher ‖ student), the forward KL; beta=1 → KL(student ‖ teacher). Its JSD is
# β·KL(t‖m) + (1−β)·KL(s‖m) with m = βt + (1−β)s; ours divides that by β(1−β) (×4 at β = 0.5).
# GKDConfig.temperature is only the sampling temperature: compute_loss scores at T = 1 (set to 1 anyway).
TRL_BETA = {"fkl": 0.0, "jsd": 0.5}


def _stamped(base: torch.nn.Module) -> tuple[torch.nn.Module, list[float]]:
    """A fresh copy of the student whose decoder records the time of every call (one per training step)."""
    model, stamps = copy.deepcopy(base), []
    model.get_decoder().register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    return model, stamps


def _window(stamps: list[float], steps: int) -> float:
    if len(stamps) != steps + 2:
        raise RuntimeError(f"expected {steps + 2} student forwards (one per step), got {len(stamps)}")
    return stamps[-1] - stamps[1]


def trl_dataset(blocks: TokenBlocks):
    """input_ids / attention_mask / labels; labels[t] = -100 where predicting token t does not count."""
    from datasets import Dataset

    ids = blocks.input_ids
    labels = torch.full_like(ids, -100)
    labels[:, 1:] = torch.where(blocks.loss_mask[:, :-1], ids[:, 1:], -100)
    cols = {"input_ids": ids, "attention_mask": blocks.attention_mask.long(), "labels": labels}
    return Dataset.from_dict({k: v.tolist() for k, v in cols.items()}).with_format("torch")


def trl_trainer(student, teacher, tok, dataset, beta: float, steps: int, out: Path):
    from transformers import PrinterCallback, default_data_collator
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    args = GKDConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR, weight_decay=WD,
        optim="adamw_torch", lr_scheduler_type="constant", max_grad_norm=1.0,  # = ours (TRL's default: fused AdamW)
        bf16=False, fp16=False, activation_checkpointing=False,  # SFTConfig defaults to bf16 + checkpointing
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, report_to=[], logging_strategy="no",
        save_strategy="no", eval_strategy="no", lmbda=0.0, seq_kd=False, beta=beta, temperature=1.0, seed=0)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                         processing_class=tok, data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # with tqdm disabled it prints the end-of-training metrics
    return trainer


def run_trl(base, teacher, tok, dataset, beta: float, steps: int, out: Path) -> float:
    student, stamps = _stamped(base)
    trl_trainer(student, teacher, tok, dataset, beta, steps + 2, out).train()
    return _window(stamps, steps)


def run_ours(base, blocks: TokenBlocks, signal, kind: str, vocab: int, steps: int) -> float:
    student, stamps = _stamped(base)
    train = LMTrainConfig(steps=steps + 2, batch_size=BATCH, optimizer=OptimizerConfig(lr=LR, weight_decay=WD),
                          scheduler="none", warmup_steps=0, grad_clip=1.0, eval_every=10**9, save_every=10**9,
                          precision="no")
    fit_lm(student, blocks, train=train, kd=TokenKDConfig(divergence=kind, jsd_beta=0.5, ratio=1.0), vocab=vocab, teacher=signal,
           device="cpu", quiet=True)
    return _window(stamps, steps)


@torch.no_grad()
def loss_check(base, teacher, tok, blocks, dataset, cache, vocab: int, out: Path) -> dict[str, float]:
    """Both losses of the untrained student on the first batch (TRL through GKDTrainer.compute_loss)."""
    batch = blocks.batch(torch.arange(BATCH))
    inputs = dataset[:BATCH]
    live = LiveLMTeacher(teacher, vocab).signal(batch)
    res = {}
    for arm, beta in TRL_BETA.items():
        trainer = trl_trainer(copy.deepcopy(base), teacher, tok, dataset, beta, 1, out)
        res[f"trl_{arm}"] = float(trainer.compute_loss(trainer.model, inputs))
        kind = "forward_kl" if arm == "fkl" else "jsd"
        res[f"ours_{arm}"] = float(lm_loss(base, batch, live, TokenKDConfig(divergence=kind, jsd_beta=0.5, ratio=1.0), vocab)["loss"])
    res["ours_fkl_cached"] = float(lm_loss(base, batch, cache.signal(batch), TokenKDConfig(ratio=1.0), vocab)["loss"])
    return res


def write(metrics: dict[str, float], extra: dict, out: Path) -> None:
    """write_result always writes results/<name>.json; route elsewhere through a temporary results dir."""
    if out.resolve() == (common.RESULTS / f"{NAME}.json").resolve():
        write_result(NAME, metrics, extra)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        common.RESULTS = Path(tmp)
        shutil.move(write_result(NAME, metrics, extra), out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (each run trains 2 more)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--blocks", type=int, default=64, help="KJV blocks of 128 tokens to train on")
    p.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    teacher, tok = lm_models.load_causal_lm(TEACHER), lm_models.load_tokenizer(TEACHER)
    vocab = lm_models.shared_vocab(tok, teacher)
    base = lm_models.student_from_teacher(teacher, overrides=STUDENT, seed=0)
    blocks = pack_text(read_kjv(), tok, seq_len=SEQ_LEN, max_blocks=args.blocks)
    dataset = trl_dataset(blocks)
    work = WORK / NAME
    cache = TopKCache.build_or_open(teacher, blocks, work / f"cache-{blocks.fingerprint()}", quiet=True, identity={
        "teacher": TEACHER, "tokenizer": lm_models.tokenizer_fingerprint(tok), "k": TOP_K, "vocab": vocab})
    live = LiveLMTeacher(teacher, vocab)
    check = loss_check(base, teacher, tok, blocks, dataset, cache, vocab, work / "trl")

    s = args.steps
    arms = {
        "trl_fkl": lambda: run_trl(base, teacher, tok, dataset, TRL_BETA["fkl"], s, work / "trl"),
        "trl_jsd": lambda: run_trl(base, teacher, tok, dataset, TRL_BETA["jsd"], s, work / "trl"),
        "ours_fkl_online": lambda: run_ours(base, blocks, live, "forward_kl", vocab, s),
        "ours_jsd_online": lambda: run_ours(base, blocks, live, "jsd", vocab, s),
        "ours_fkl_cached": lambda: run_ours(base, blocks, cache, "forward_kl", vocab, s),
    }
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.rounds):
        for name, arm in arms.items():
            seconds[name].append(arm())
            print(f"round {r + 1}/{args.rounds} {name}: {s * BATCH * SEQ_LEN / seconds[name][-1]:.0f} tokens/s",
                  flush=True)
    tps = {k: s * BATCH * SEQ_LEN / statistics.median(v) for k, v in seconds.items()}
    write({
        **{f"{k}_tokens_per_s": v for k, v in tps.items()},
        "online_ratio": tps["ours_fkl_online"] / tps["trl_fkl"],
        "jsd_ratio": tps["ours_jsd_online"] / tps["trl_jsd"],
        "cached_ratio": tps["ours_fkl_cached"] / tps["trl_fkl"],
        "student_params": lm_models.count_parameters(base), "teacher_params": lm_models.count_parameters(teacher),
        "steps": s, "rounds": args.rounds, "batch_tokens": BATCH * SEQ_LEN,
    }, {"loss_check": check}, args.out)


if __name__ == "__main__":
    main()
