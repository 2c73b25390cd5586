"""One timed distillation workload, for benchmarks/speed_pass.py; prints one JSON line.

Run by speed_pass.py with PYTHONPATH pointing at the `src` of the code under test (the tree before
the speed pass, or this one), so the same workload times both. Not a benchmark on its own.

  fmnist  configs/fashion_mnist.yaml's distillation step: the CNN teacher run live on each batch
          (flip augmentation), the 800-800 MLP student, KD (T 4, α 0.9), AdamW, batch 128.
  llm     benchmarks/llm_vs_trl.py's step: SmolLM2-135M → 6-layer student, forward KL, batch 4 × 128,
          from the top-64 teacher cache (`cached`, the default of `distill lm`) or the live teacher.
Timing: a forward pre-hook on the student stamps every step; the window runs from the stamp of the
4th step to the last stamp, so setup, the dry forward and the first steps' allocations are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def fmnist(steps: int) -> dict[str, float]:
    from distill.data.config import DataConfig
    from distill.data.datasets import load_data
    from distill.losses.methods import KD
    from distill.models.zoo import build_model, freeze
    from distill.recipes.classify.config import load_config
    from distill.teachers.signals import LiveTeacher
    from distill.training.classify import fit
    from distill.training.config import TrainConfig

    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml")
    batch = cfg.train.batch_size
    data = load_data(DataConfig(name="fashion_mnist", limit=(steps + 4) * batch))
    teacher = freeze(build_model(cfg.teacher, data.input_shape, data.num_classes, seed=0))  # cost needs no weights
    student = build_model(cfg.student, data.input_shape, data.num_classes, seed=0)
    stamps = _stamp(student)
    train = TrainConfig(epochs=1, batch_size=batch, optimizer=cfg.train.optimizer, augment=cfg.train.augment)
    fit(student, data.train, objective=KD(cfg.kd.temperature, cfg.kd.ratio), config=train,
        num_classes=data.num_classes, teacher=LiveTeacher(teacher), quiet=True, device="cpu")
    return _rate(stamps[1:], batch, "images_per_s")  # stamps[0]: the dry forward that checks shapes


def llm(steps: int, signal: str) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import warnings

    warnings.filterwarnings("ignore")
    from llm_vs_trl import BATCH, NAME, SEQ_LEN, STUDENT, TEACHER, TOP_K, WORK  # noqa: I001
    from transformers.utils import logging as hf_logging

    from distill.training.config import OptimizerConfig
    from distill.models import causal_lm as lm_models
    from distill.losses.config import TokenKDConfig
    from distill.training.config import LMTrainConfig
    from distill.teachers.tokens import LiveLMTeacher, TopKCache
    from distill.data.tokens import pack_text, read_kjv
    from distill.training.lm import fit_lm

    hf_logging.set_verbosity_error()
    teacher, tok = lm_models.load_causal_lm(TEACHER), lm_models.load_tokenizer(TEACHER)
    vocab = lm_models.shared_vocab(tok, teacher)
    student = lm_models.student_from_teacher(teacher, overrides=STUDENT, seed=0)
    blocks = pack_text(read_kjv(), tok, seq_len=SEQ_LEN, max_blocks=64)
    if signal == "cached":
        source = TopKCache.build_or_open(teacher, blocks, WORK / NAME / f"cache-{blocks.fingerprint()}", quiet=True,
                                        identity={"teacher": TEACHER, "tokenizer": lm_models.tokenizer_fingerprint(tok),
                                                  "k": TOP_K, "vocab": vocab})
    else:
        source = LiveLMTeacher(teacher, vocab)
    stamps = _stamp(student.get_decoder())
    train = LMTrainConfig(steps=steps + 4, batch_size=BATCH, optimizer=OptimizerConfig(lr=5e-4, weight_decay=0.01),
                          scheduler="none", warmup_steps=0, grad_clip=1.0, eval_every=10**9, save_every=10**9,
                          precision="no")
    fit_lm(student, blocks, train=train, kd=TokenKDConfig(divergence="forward_kl", ratio=1.0), vocab=vocab, teacher=source,
           device="cpu", quiet=True)
    return _rate(stamps, BATCH * SEQ_LEN, "tokens_per_s")


def _stamp(module: torch.nn.Module) -> list[float]:
    stamps: list[float] = []
    module.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    return stamps


def _rate(stamps: list[float], per_step: int, unit: str) -> dict[str, float]:
    timed = stamps[3:]  # steps 4.. : the window covers len(timed) - 1 whole steps
    return {unit: (len(timed) - 1) * per_step / (timed[-1] - timed[0]), "steps": len(timed) - 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=["fmnist", "llm_cached", "llm_live"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import distill

    out = fmnist(args.steps) if args.workload == "fmnist" else llm(args.steps, args.workload.split("_")[1])
    print(json.dumps({**out, "distill": str(Path(distill.__file__).parent)}))


if __name__ == "__main__":
    main()
