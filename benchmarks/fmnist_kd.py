"""Hinton-style distillation on Fashion-MNIST: CNN teacher -> MLP student, 3 seeds.

Run: .venv/bin/python benchmarks/fmnist_kd.py            (about 30-40 min on 2 CPU cores)
Needs Fashion-MNIST: bash scripts/get-fashion-mnist.sh

Arms per seed (same student, same epochs):
  plain          labels only, no augmentation
  kd_cached      KD from teacher logits cached once on the clean images (no augmentation)
  plain_aug      labels only, with the shift/flip augmentation
  kd_consistent  KD with the teacher run live on the same augmented view (Beyer et al. 2022)
Writes benchmarks/results/fmnist_kd.json and the seed-0 report to docs/reports/fashion_mnist/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import WORK, mean_std, publish_run, write_result

from distill.config import load_config
from distill.pipeline import run

CONFIG = Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml"
REPORT_DIR = Path(__file__).parents[1] / "docs" / "reports" / "fashion_mnist"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    out = WORK / "fmnist"
    common = [f"output_dir={out}", "quiet=true"]
    teacher_ckpt = out / "consistent-0" / "teacher" / "model.safetensors"
    arms: dict[str, list[float]] = {k: [] for k in ("plain", "kd_cached", "plain_aug", "kd_consistent")}
    reports = []
    for seed in range(args.seeds):
        teacher = [] if seed == 0 else [f"teacher.checkpoint={teacher_ckpt}"]
        consistent = _run(common + teacher + [f"name=consistent-{seed}", f"train.seed={seed}"])
        teacher = [f"teacher.checkpoint={teacher_ckpt}"]
        cached = _run(common + teacher + [f"name=cached-{seed}", f"train.seed={seed}",
                                          "teacher.signal=cached", f"teacher.cache_dir={out}/cache",
                                          "train.augment.shift=0", "train.augment.flip=false"])
        arms["plain_aug"].append(consistent["models"]["baseline"]["accuracy"])
        arms["kd_consistent"].append(consistent["models"]["distilled"]["accuracy"])
        arms["plain"].append(cached["models"]["baseline"]["accuracy"])
        arms["kd_cached"].append(cached["models"]["distilled"]["accuracy"])
        reports.append(consistent)
        if seed == 0:
            publish_run(out / "consistent-0", REPORT_DIR)
    write_result("fmnist_kd", _metrics(arms, reports), {"per_seed": arms})


def _run(overrides: list[str]) -> dict:
    cfg = load_config(CONFIG, overrides)
    run_dir = run(cfg, resume=True)  # resume: a re-run after an interruption skips finished stages
    return json.loads((run_dir / "report.json").read_text())


def _metrics(arms: dict[str, list[float]], reports: list[dict]) -> dict[str, float]:
    teacher_acc = reports[0]["models"]["teacher"]["accuracy"]
    m: dict[str, float] = {"teacher_acc": 100 * teacher_acc}
    for arm, accs in arms.items():
        mean, std = mean_std([100 * a for a in accs])
        m[f"{arm}_acc_mean"], m[f"{arm}_acc_std"] = mean, std
    # The headline keys: KD = the consistent-teaching arm, plain = labels only, no augmentation.
    m["kd_acc_mean"], m["kd_acc_std"] = m["kd_consistent_acc_mean"], m["kd_consistent_acc_std"]
    gap = m["teacher_acc"] - m["plain_acc_mean"]
    m["gap_closed"] = (m["kd_acc_mean"] - m["plain_acc_mean"]) / gap
    m["gap_closed_vs_plain_aug"] = (m["kd_acc_mean"] - m["plain_aug_acc_mean"]) / (
        m["teacher_acc"] - m["plain_aug_acc_mean"])
    m["gap_closed_cached"] = (m["kd_cached_acc_mean"] - m["plain_acc_mean"]) / gap
    speed = [r["summary"]["speedup_b1"] for r in reports]
    m["speedup_b1"] = sorted(speed)[len(speed) // 2]
    m["compression"] = reports[0]["summary"]["compression"]
    return m


if __name__ == "__main__":
    main()
