"""SIGKILL at random moments of training, teacher-cache building, generation, search and LM training;
resume; count what was lost.

    python benchmarks/faults.py              # about 5 min on 2 idle CPU cores, 9 when they are busy
    python benchmarks/faults.py --quick      # one loop per fork-mode job (a minute or two)

For each job, an uninterrupted reference run, then loops in fresh directories: start the job,
SIGKILL it after a seeded random delay, start it again (resuming), up to --kills times, then let it
finish. After every kill each file must be whole; at the end the result must equal the reference
(weights, optimizer state, metrics, cache shards, generated records, search candidates: exactly).
The kill loop and the checks are those of tests/test_faults.py, whose fast version runs in the
default test suite.

Jobs: `distill run` on digits (teacher → baseline → teacher cache → distilled → evaluation → report),
a 32-shard teacher-logit cache, `distill generate` of 500 prompts against a local fake endpoint,
`distill search` over two students, and `fit_lm` of a tiny Llama for 40 steps from a top-k teacher
cache it builds first (checkpoint and evaluation every 2 steps). Most loops fork this process per
attempt (imports done once); the `exec` loops start real `python` processes.

Writes benchmarks/results/faults.json: kills, resumed (runs killed at least once that finished
equal to the reference), records_lost, half_written_files, and the same per job with the points
(stages) where the kills landed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from common import WORK, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_faults as tf  # noqa: E402  (the kill loop and file checks, shared with the tests)
from textkd_helpers import start_fake_endpoint  # noqa: E402

# (job, mode, loops, kills per loop); --quick keeps the first loop of each fork-mode job
PLAN = [("run", "fork", 4, 5), ("cache", "fork", 6, 6), ("generate", "fork", 6, 6), ("search", "fork", 2, 5),
        ("lm", "fork", 4, 6), ("run", "exec", 2, 5), ("generate", "exec", 1, 5), ("lm", "exec", 1, 6)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one loop per fork-mode job")
    ap.add_argument("--budget-s", type=float, default=15 * 60, help="start no new loop after this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = WORK / "faults"
    shutil.rmtree(work, ignore_errors=True)
    server, url = start_fake_endpoint()
    jobs = {"run": tf.run_job(teacher_epochs=30, student_epochs=20), "cache": tf.cache_job(),
            "generate": tf.generate_job(url), "search": tf.search_job(), "lm": tf.lm_job(steps=40)}
    plan = [(j, m, 1, k) for j, m, _, k in PLAN if m == "fork"] if args.quick else PLAN
    start, per_job = time.monotonic(), {}
    try:
        for name, mode, loops, kills in plan:
            stats = per_job.setdefault(f"{name} ({mode})", _empty())
            timeline = tf.reference_run(jobs[name], work / f"{name}-{mode}-ref", mode)
            for n in range(loops):
                if time.monotonic() - start > args.budget_s:
                    break
                root = work / f"{name}-{mode}-{n}"
                out = tf.kill_loop(jobs[name], work / f"{name}-{mode}-ref", root, timeline, kills=kills,
                                   seed=args.seed * 1000 + n, mode=mode)
                _add(stats, out)
                print(f"{name} ({mode}) loop {n}: {out.kills} kills at {dict(out.points)}, "
                      f"lost {out.records_lost}, half-written {len(out.half_written)}, "
                      f"differences {out.differences}", flush=True)
                shutil.rmtree(root)
    finally:
        server.shutdown()
    total = {k: sum(s[k] for s in per_job.values())
             for k in ("kills", "resumed", "loops", "records_lost", "half_written_files", "mismatched_runs",
                       "stale_temp_files", "cut_lines_trimmed")}
    write_result("faults", total, extra={"per_job": per_job, "wall_s": round(time.monotonic() - start)})


def _empty() -> dict:
    return {"loops": 0, "kills": 0, "resumed": 0, "records_lost": 0, "half_written_files": 0,
            "mismatched_runs": 0, "stale_temp_files": 0, "cut_lines_trimmed": 0, "points": Counter(),
            "findings": []}


def _add(stats: dict, out: tf.LoopResult) -> None:
    stats["loops"] += 1
    stats["kills"] += out.kills
    stats["resumed"] += int(out.kills > 0 and not out.differences)
    stats["records_lost"] += out.records_lost
    stats["half_written_files"] += len(out.half_written)
    stats["mismatched_runs"] += int(bool(out.differences))
    stats["stale_temp_files"] += out.stale_temp
    stats["cut_lines_trimmed"] += out.cut_lines
    stats["points"].update(out.points)
    stats["findings"] += out.half_written + out.differences


if __name__ == "__main__":
    main()
