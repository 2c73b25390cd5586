"""Cost of distillation over plain training, per epoch, measured side by side in one run.

Run: .venv/bin/python benchmarks/kd_overhead.py     (about 3 min on 2 CPU cores)

  cached_ratio = KD epoch with cached teacher logits / plain student epoch          (target <= 1.10)
  online_ratio = KD epoch with the teacher run live / (teacher forward + plain epoch)  (target <= 1.10)

Arms are interleaved and repeated; each figure is the median. Weights do not change cost, so the
teacher is the Fashion-MNIST benchmark's CNN architecture, freshly initialised.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_result

from distill.data.arrays import ArrayDataset
from distill.data.batches import iter_batches
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.losses.methods import CE, KD
from distill.models.config import ModelConfig
from distill.models.zoo import build_model, channels_last, freeze
from distill.recipes.classify.config import load_config
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

CONFIG = Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cfg = load_config(CONFIG)
    data = load_data(DataConfig(name="fashion_mnist", limit=args.examples))
    teacher = freeze(build_model(cfg.teacher, data.input_shape, data.num_classes, seed=0))
    channels_last(teacher, data.train.inputs[:2])  # the layout `fit` gives a live teacher, for the forward-only arm too
    train_cfg = TrainConfig(epochs=1, batch_size=cfg.train.batch_size, optimizer=cfg.train.optimizer)
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedTeacher.build_or_load(teacher, data.train, Path(tmp), quiet=True)
        arms = {
            "plain": lambda: _epoch(cfg.student, data, CE(), None, train_cfg),
            "kd_cached": lambda: _epoch(cfg.student, data, KD(4.0, 0.9), cached, train_cfg),
            "kd_live": lambda: _epoch(cfg.student, data, KD(4.0, 0.9), LiveTeacher(teacher), train_cfg),
            "teacher_forward": lambda: _teacher_pass(teacher, data.train, train_cfg.batch_size),
        }
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                t0 = time.perf_counter()
                arm()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    write_result("kd_overhead", {
        "cached_ratio": med["kd_cached"] / med["plain"],
        "online_ratio": med["kd_live"] / (med["plain"] + med["teacher_forward"]),
        "plain_epoch_s": med["plain"], "kd_cached_epoch_s": med["kd_cached"],
        "kd_live_epoch_s": med["kd_live"], "teacher_forward_s": med["teacher_forward"],
        "examples": len(data.train), "repeats": args.repeats,
    })


def _epoch(student_cfg: ModelConfig, data, objective, teacher, cfg: TrainConfig) -> None:
    student = build_model(student_cfg, data.input_shape, data.num_classes, seed=0)
    fit(student, data.train, objective=objective, config=cfg, num_classes=data.num_classes,
        teacher=teacher, quiet=True, device="cpu")


@torch.no_grad()
def _teacher_pass(teacher: torch.nn.Module, dataset: ArrayDataset, batch_size: int) -> None:
    for batch in iter_batches(dataset, torch.arange(len(dataset)), batch_size):
        teacher(batch["inputs"])


if __name__ == "__main__":
    main()
