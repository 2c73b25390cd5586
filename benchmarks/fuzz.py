"""Fuzzing what a user controls, with many examples: configs, datasets, token sequences, HTTP bodies.

    python benchmarks/fuzz.py                  # 5000 examples per property, about 5 min on 2 busy cores
    python benchmarks/fuzz.py --examples 200   # a quick look

Runs the slow variants of tests/test_fuzz.py (hypothesis property tests) with DISTILL_FUZZ_EXAMPLES
examples each, and reads back the cases each property tried and how each ended: success, a clear
error (a DistillError; from `distill serve`, a 4xx JSON error), an unclear error (anything else:
a traceback from inside torch, pydantic, yaml, json, or a 5xx) or a hang (a case past 60 s, or no
HTTP answer in 30 s). Writes benchmarks/results/fuzz.json: cases, unclear_errors, hangs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=5000, help="examples per property")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fuzz.json"
        env = {**os.environ, "DISTILL_FUZZ_EXAMPLES": str(args.examples), "DISTILL_FUZZ_LOG": str(log)}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow",
                               "tests/test_fuzz.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        per_property = json.loads(log.read_text()) if log.is_file() else {}
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    total = {k: sum(p[k] for p in per_property.values())
             for k in ("cases", "ok", "clear_errors", "unclear_errors", "hangs")}
    total["failed_tests"] = proc.stdout.count("FAILED ")
    total["properties"] = len(per_property)
    write_result("fuzz", total, extra={"examples_per_property": args.examples, "wall_s": round(wall),
                                       "per_property": per_property})


if __name__ == "__main__":
    main()
