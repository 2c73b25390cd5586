"""Does distillation beat the same student trained alone? Plain vs the default recipe, per scenario.

Run: .venv/bin/python benchmarks/kd_wins.py [--scenarios NAME ...] [--seeds 3]
Each (scenario, seed) runs in its own process and is saved to benchmarks/work/kd_wins/<scenario>-<seed>.json,
so an interrupted benchmark continues where it stopped; a final pass gathers every saved seed.

Arms of a scenario, same student, same number of optimizer steps:
  plain       labels only, no augmentation          (the recipe soft_targets' baseline)
  plain_aug   labels only, the recipe's augmentation (the default recipe's baseline)
  kd          the default recipe (`recipe: auto`), with the transfer set where the scenario has one
The plain arm a win is measured against is the better of plain and plain_aug. A scenario is won when
kd − plain > 2 × the larger of their standard deviations. Gap closed = (kd − plain) / (teacher − plain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import WORK, mean_std, run_report, write_result

OUT = WORK / "kd_wins"
# scenario -> (config, overrides, what it is)
SCENARIOS: dict[str, tuple[Path | None, list[str], str]] = {
    "mnist5k_10pct": (None, [], "MNIST-5k, labels on 10% (350 images), the other 3,150 unlabelled; CNN teacher "
                      "trained on the 350, MLP 128 student; 60 epochs over labelled ∪ unlabelled (the built-in "
                      "default job)"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("SCENARIO", "SEED"), help="run one seed (in this process)")
    args = p.parse_args()
    if args.one:
        run_seed(args.one[0], int(args.one[1]))
        return
    for name in args.scenarios:
        for seed in range(args.seeds):
            if not (OUT / f"{name}-{seed}.json").is_file():  # each seed in a fresh process
                subprocess.run([sys.executable, __file__, "--one", name, str(seed)], check=True)
    write_result("kd_wins", metrics(args.scenarios, args.seeds), {"scenarios": {
        n: SCENARIOS[n][2] for n in args.scenarios}})


def run_seed(name: str, seed: int) -> None:
    config, overrides, _ = SCENARIOS[name]
    common = [f"output_dir={OUT / 'runs'}", "quiet=true", f"train.seed={seed}", f"teacher.train.seed={seed}",
              f"teacher.cache_dir={OUT / 'cache'}", *overrides]
    start = time.perf_counter()
    auto = run_report(config, [*common, f"name={name}-auto-{seed}"])
    auto_s = time.perf_counter() - start
    plain = run_report(config, [*common, f"name={name}-plain-{seed}", "recipe=soft_targets",
                                "teacher.signal=cached"])
    row = {"teacher": auto["models"]["teacher"]["accuracy"], "plain": plain["models"]["baseline"]["accuracy"],
           "plain_aug": auto["models"]["baseline"]["accuracy"], "kd": auto["models"]["distilled"]["accuracy"],
           "soft_targets": plain["models"]["distilled"]["accuracy"], "recipe": auto["recipe"],
           "wall_s_auto_run": auto_s}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))


def metrics(names: list[str], seeds: int) -> dict[str, float]:
    m: dict[str, float] = {}
    won, gaps = 0, []
    for name in names:
        rows = [json.loads((OUT / f"{name}-{s}.json").read_text()) for s in range(seeds)]
        stats = {arm: mean_std([100 * r[arm] for r in rows])
                 for arm in ("teacher", "plain", "plain_aug", "kd", "soft_targets")}
        best_plain = max(("plain", "plain_aug"), key=lambda a: stats[a][0])
        (plain, plain_std), (kd, kd_std), teacher = stats[best_plain], stats["kd"], stats["teacher"][0]
        gap = (kd - plain) / (teacher - plain) if teacher > plain else float("nan")
        won += kd - plain > 2 * max(plain_std, kd_std)
        gaps.append(gap)
        for arm, (mean, std) in stats.items():
            m[f"{name}_{arm}_mean"], m[f"{name}_{arm}_std"] = mean, std
        m[f"{name}_plain_mean"], m[f"{name}_plain_std"] = plain, plain_std
        m[f"{name}_plain_no_aug_mean"] = stats["plain"][0]
        m[f"{name}_kd_mean"], m[f"{name}_gap_closed"] = kd, gap
        m[f"{name}_distilled_epochs"] = rows[0]["recipe"]["distilled_epochs"]
        m[f"{name}_baseline_epochs"] = rows[0]["recipe"]["baseline_epochs"]
        m[f"{name}_wall_s_auto_run"] = mean_std([r["wall_s_auto_run"] for r in rows])[0]
    m["scenarios"], m["scenarios_won"] = len(names), won
    m["mean_gap_closed"] = sum(gaps) / len(gaps)
    return m


if __name__ == "__main__":
    main()
