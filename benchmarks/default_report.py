"""Run the built-in default job and publish its report to docs/reports/default/.

Run: .venv/bin/python benchmarks/default_report.py     (about 2 min on 2 CPU cores)
Writes benchmarks/results/default_run.json (the report's headline figures and the job's wall time).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from common import WORK, publish_run, write_result

from distill.recipes.classify.config import load_config
from distill.recipes.classify.pipeline import run

REPORT_DIR = Path(__file__).parents[1] / "docs" / "reports" / "default"


def main() -> None:
    out = WORK / "default"
    if out.exists():
        shutil.rmtree(out)
    cfg = load_config(None, [f"output_dir={out}", f"teacher.cache_dir={out}/cache", "quiet=true"])
    t0 = time.perf_counter()
    run_dir = run(cfg)
    wall = time.perf_counter() - t0
    publish_run(run_dir, REPORT_DIR)
    report = json.loads((run_dir / "report.json").read_text())
    m = report["models"]
    verdict = report["verdict"]
    write_result("default_run", {
        "teacher_acc": 100 * m["teacher"]["accuracy"], "baseline_acc": 100 * m["baseline"]["accuracy"],
        "distilled_acc": 100 * m["distilled"]["accuracy"], "gap_closed": report["summary"]["gap_closed"],
        "speedup_b1": report["summary"]["speedup_b1"], "compression": report["summary"]["compression"],
        "job_wall_s": wall, "verdict_beats": float(verdict["outcome"] == "beats"),
        "verdict_low_pts": verdict["low"], "verdict_high_pts": verdict["high"], "verdict_p": verdict["p_value"],
        "pilot_share": report["timing"]["pilot_share"],
    }, {"recipe": report["recipe"]["name"], "verdict": report["doctor"]["verdict"]})


if __name__ == "__main__":
    main()
