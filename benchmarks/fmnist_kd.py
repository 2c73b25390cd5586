"""Hinton-style distillation on Fashion-MNIST: CNN teacher -> small MLP student, 3 seeds.

Run: .venv/bin/python benchmarks/fmnist_kd.py   (teacher ~20 min once, then ~6 min per seed, 2 CPU cores)
Needs Fashion-MNIST: bash scripts/get-fashion-mnist.sh

The teacher (configs/fashion_mnist.yaml) is trained once and shared. The student is an MLP small
enough to answer ≥ 5× faster than the teacher at batch 1 (STUDENT). Arms per seed, same student,
same epochs:
  plain      labels only, no augmentation
  kd_cached  KD from teacher logits cached once on the clean images, no aug (Hinton 2015's setting)
  plain_aug  labels only, with the config's augmentation (flips)
  kd         the default recipe (`recipe: auto`, its T and α), with the config's augmentation
Headline: kd against the better plain arm.
Writes benchmarks/results/fmnist_kd.json and the seed-0 report to docs/reports/fashion_mnist/.
Interrupted? Run it again: finished runs and stages are reused.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import WORK, mean_std, publish_run, run_report, teacher_once, write_result

from distill.eval.report import render

CONFIG = Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml"
REPORT_DIR = Path(__file__).parents[1] / "docs" / "reports" / "fashion_mnist"
OUT = WORK / "fmnist"
NO_AUG = ["train.augment.shift=0", "train.augment.flip=false", "train.augment.mixup=0"]
STUDENT = ["student.kwargs={hidden: [256]}"]
AUTO = ["recipe=auto", "teacher.signal=auto", "kd.temperature=null", "kd.ratio=null"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only-seed", type=int, help="train this seed's runs and stop (to split seeds "
                   "across processes); a final plain run then gathers every seed")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every student run")
    args = p.parse_args()
    common = [f"output_dir={OUT}", "quiet=true", f"teacher.checkpoint={teacher()}", f"teacher.cache_dir={OUT}/cache",
              *STUDENT, *args.overrides]
    arms: dict[str, list[float]] = {k: [] for k in ("plain", "kd_cached", "plain_aug", "kd")}
    reports = []
    for seed in [args.only_seed] if args.only_seed is not None else range(args.seeds):
        seeded = [*common, f"train.seed={seed}"]
        auto = run_report(CONFIG, [*seeded, f"name=auto-{seed}", *AUTO])
        cached = run_report(CONFIG, [*seeded, f"name=cached-{seed}", "teacher.signal=cached", *NO_AUG])
        arms["plain_aug"].append(auto["models"]["baseline"]["accuracy"])
        arms["kd"].append(auto["models"]["distilled"]["accuracy"])
        arms["plain"].append(cached["models"]["baseline"]["accuracy"])
        arms["kd_cached"].append(cached["models"]["distilled"]["accuracy"])
        reports.append(auto)
        if seed == 0 and args.only_seed is None:
            _publish(OUT / "auto-0")
    if args.only_seed is None:
        write_result("fmnist_kd", _metrics(arms, reports), {"per_seed": arms})


def _publish(run_dir: Path) -> None:
    """Publish the seed-0 report, with the shared teacher's learning curve drawn in."""
    (run_dir / "teacher").mkdir(exist_ok=True)
    shutil.copy(OUT / "teacher" / "teacher" / "metrics.jsonl", run_dir / "teacher" / "metrics.jsonl")
    render(run_dir)
    publish_run(run_dir, REPORT_DIR)


def teacher() -> Path:
    """The Fashion-MNIST teacher, trained once (resumable); its weights."""
    return teacher_once(CONFIG, [f"output_dir={OUT}", "quiet=true"])


def _metrics(arms: dict[str, list[float]], reports: list[dict]) -> dict[str, float]:
    teacher_acc = reports[0]["models"]["teacher"]["accuracy"]
    m: dict[str, float] = {"teacher_acc": 100 * teacher_acc}
    for arm, accs in arms.items():
        mean, std = mean_std([100 * a for a in accs])
        m[f"{arm}_acc_mean"], m[f"{arm}_acc_std"] = mean, std
    # Headline: the default recipe against the better plain arm (so a win is the teacher's, not the flips')
    best = max(("plain", "plain_aug"), key=lambda a: m[f"{a}_acc_mean"])
    m["best_plain_acc_mean"], m["best_plain_acc_std"] = m[f"{best}_acc_mean"], m[f"{best}_acc_std"]
    m["gap_closed"] = (m["kd_acc_mean"] - m["best_plain_acc_mean"]) / (m["teacher_acc"] - m["best_plain_acc_mean"])
    m["gap_closed_cached"] = (m["kd_cached_acc_mean"] - m["plain_acc_mean"]) / (m["teacher_acc"] - m["plain_acc_mean"])
    m["kd_minus_plain_in_std"] = (m["kd_acc_mean"] - m["best_plain_acc_mean"]) / max(
        m["kd_acc_std"], m["best_plain_acc_std"])
    speed = [r["summary"]["speedup_b1"] for r in reports]
    m["speedup_b1"] = sorted(speed)[len(speed) // 2]
    m["compression"] = reports[0]["summary"]["compression"]
    return m


if __name__ == "__main__":
    main()
