"""Distillation on a third modality: spoken digits (log-mel spectrograms), tested on unheard voices.

Run: .venv/bin/python benchmarks/spoken_digits.py   (21 min on a shared 2-core CPU, one thread)
Needs the clips once: bash scripts/get-spoken-digits.sh   (espeak-ng, about 2 min)

The `distill run` pipeline of configs/spoken_digits.yaml: a CNN teacher trained once and shared,
then per seed (0, 1, 2) a tiny CNN student trained on labels only (plain) and by KD from the cached
teacher logits, same epochs. Writes benchmarks/results/spoken_digits.json.
Interrupted? Run it again: finished runs and stages are reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import WORK, mean_std, run_report, teacher_once, write_result

CONFIG = Path(__file__).parents[1] / "configs" / "spoken_digits.yaml"
OUT = WORK / "spoken_digits"


def main() -> None:
    torch.set_num_threads(1)  # another benchmark may share the machine
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. data.path=DIR)")
    args = p.parse_args()
    common = [f"output_dir={OUT}", "quiet=true", *args.overrides]
    teacher_weights = teacher_once(CONFIG, common)
    shared = [f"teacher.checkpoint={teacher_weights}", f"teacher.cache_dir={OUT}/cache"]
    reports = [run_report(CONFIG, common + shared + [f"name=seed-{seed}", f"train.seed={seed}"])
               for seed in range(args.seeds)]
    per_seed = {arm: [100 * r["models"][key]["accuracy"] for r in reports]
                for arm, key in (("plain", "baseline"), ("kd", "distilled"))}
    per_seed["speedup_b1"] = [r["summary"]["speedup_b1"] for r in reports]
    dataset = reports[0]["dataset"] | {"classes": len(reports[0]["dataset"]["classes"])}
    write_result("spoken_digits", _metrics(reports), {"per_seed": per_seed, "dataset": dataset})


def _metrics(reports: list[dict]) -> dict[str, float]:
    m: dict[str, float] = {"teacher_acc": 100 * reports[0]["models"]["teacher"]["accuracy"]}
    for arm, key in (("plain", "baseline"), ("kd", "distilled")):
        accs = [100 * r["models"][key]["accuracy"] for r in reports]
        m[f"{arm}_acc_mean"], m[f"{arm}_acc_std"] = mean_std(accs)
    gap = m["teacher_acc"] - m["plain_acc_mean"]
    m["gap_closed"] = (m["kd_acc_mean"] - m["plain_acc_mean"]) / gap if gap > 0 else float("nan")
    m["speedup_b1"] = mean_std([r["summary"]["speedup_b1"] for r in reports])[0]
    m["compression"] = reports[0]["summary"]["compression"]
    return m


if __name__ == "__main__":
    main()
