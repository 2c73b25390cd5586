"""The speed pass, before and after, side by side: distillation-step throughput of the code before
it (commit BEFORE) and of this tree, on the Fashion-MNIST and the LLM workloads.

Run: .venv/bin/python benchmarks/speed_pass.py      (~15 min on 2 cores; needs git, Fashion-MNIST,
     and the LM assets: bash scripts/get-fashion-mnist.sh; bash scripts/get-lm-assets.sh)

The speed pass: fused optimizer kernels (`training.fused_ok`: one kernel updates all of AdamW's
tensors) and channels-last weights for convolutional live teachers (`models.channels_last`).
`src/distill` at BEFORE is extracted with `git archive` under benchmarks/work/speed_pass/; every
round runs each workload once on each tree, alternating, in a fresh process
(benchmarks/speed_probe.py with PYTHONPATH at that tree's src); each figure is the median over
rounds and each speedup the ratio of the medians (after / before).

  fmnist_speedup    images/s of the Fashion-MNIST distillation step (live CNN teacher, MLP student)
  llm_speedup       tokens/s of the LLM distillation step from the top-64 teacher cache (distill lm's default)
  llm_live_speedup  the same step with the teacher run live
Writes benchmarks/results/speed_pass.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from common import WORK, write_result

ROOT = Path(__file__).parents[1]
BEFORE = "7b9107c"  # main before the speed pass
WORKLOADS = {"fmnist": ("images_per_s", 60), "llm_cached": ("tokens_per_s", 8), "llm_live": ("tokens_per_s", 6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", default=BEFORE, help="commit to compare with (default: main before the speed pass)")
    p.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="a subset of the workloads")
    args = p.parse_args()
    trees = {"before": extract(args.before), "after": ROOT / "src"}
    workloads = {k: v for k, v in WORKLOADS.items() if not args.only or k in args.only}
    rates: dict[str, dict[str, list[float]]] = {w: {t: [] for t in trees} for w in workloads}
    for r in range(args.rounds):
        for workload, (unit, steps) in workloads.items():
            for tree, src in trees.items():
                rate = probe(workload, steps, src)[unit]
                rates[workload][tree].append(rate)
                print(f"round {r + 1}/{args.rounds} {workload} {tree}: {rate:.1f} {unit}", flush=True)
    metrics = {}
    for workload, (unit, _) in workloads.items():
        med = {tree: statistics.median(v) for tree, v in rates[workload].items()}
        metrics[f"{workload}_before_{unit}"], metrics[f"{workload}_after_{unit}"] = med["before"], med["after"]
        key = {"fmnist": "fmnist_speedup", "llm_cached": "llm_speedup", "llm_live": "llm_live_speedup"}[workload]
        metrics[key] = med["after"] / med["before"]
    write_result("speed_pass", metrics, {"before": args.before, "rounds": args.rounds, "threads": 2,
                                         "per_round": rates})


def extract(commit: str) -> Path:
    """`src/distill` as it was at `commit`, under benchmarks/work/speed_pass/<commit>/src."""
    dest = WORK / "speed_pass" / commit
    if not (dest / "src" / "distill" / "__init__.py").is_file():
        archive = subprocess.run(["git", "archive", commit, "src/distill"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    return dest / "src"


def probe(workload: str, steps: int, src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_probe.py"), workload, "--steps", str(steps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if Path(result["distill"]).resolve() != (src / "distill").resolve():
        raise RuntimeError(f"the probe imported distill from {result['distill']}, not {src}")
    return result


if __name__ == "__main__":
    main()
