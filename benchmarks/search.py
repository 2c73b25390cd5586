"""`distill search` benchmarks: the recommended student against the stated requirement.

Run: .venv/bin/python benchmarks/search.py fmnist   (Fashion-MNIST, CNN students; ~30 min on 2 cores)
     .venv/bin/python benchmarks/search.py bbc      (BBC News, MiniLM teacher, layer-initialised students)
     .venv/bin/python benchmarks/search.py fmnist requirements.runtime=onnxruntime   (re-times in ONNX Runtime)
Both resume when interrupted. Writes benchmarks/results/search_<name>.json (search_<name>_onnxruntime.json
when timed in ONNX Runtime) and copies search.md and the Pareto plot to docs/reports/ under the same name.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import WORK, write_result

from distill.recipes.search import load_search_config, run_search

ROOT = Path(__file__).parents[1]
CONFIGS = {"fmnist": ROOT / "configs" / "search_fmnist.yaml", "bbc": ROOT / "configs" / "search_bbc.yaml"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=sorted(CONFIGS))
    p.add_argument("overrides", nargs="*", help="key=value overrides of the search config")
    args = p.parse_args()
    cfg = load_search_config(CONFIGS[args.which], [f"output_dir={WORK / 'search'}", *args.overrides])
    if args.which == "fmnist":  # reuse the Fashion-MNIST benchmark's teacher (trained once, ~20 min)
        from fmnist_kd import teacher

        cfg.overrides.append(f"teacher.checkpoint={teacher()}")
    if args.which == "bbc":  # reuse benchmarks/bbc_encoder.py's fine-tuned MiniLM when it exists
        bbc_teacher = WORK / "bbc_encoder" / "teacher-L128-n600-e2.safetensors"
        if bbc_teacher.is_file():
            cfg.overrides.append(f"teacher.checkpoint={bbc_teacher}")
    root = run_search(cfg, resume=True)
    report = json.loads((root / "search.json").read_text())
    best = report["recommended"] or report["closest"][0]
    metrics = {"recommended_drop": best["drop"], "recommended_speedup": best["speedup"],
               "requirement_met": float(report["requirement_met"]), "recommended_accuracy": best["accuracy"],
               "teacher_accuracy": report["teacher"]["accuracy"], "candidates": len(report["candidates"]),
               "recommended_params": best["params"], "teacher_params": report["teacher"]["params"]}
    # timed in ONNX Runtime (requirements.runtime=onnxruntime): same candidates, re-measured, own files
    name = f"search_{args.which}" + ("" if cfg.requirements.runtime == "torch" else f"_{cfg.requirements.runtime}")
    write_result(name, metrics, {"requirements": report["requirements"], "recommended": best, "unmet": report["unmet"]})
    dest = ROOT / "docs" / "reports" / name
    (dest / "plots").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "search.md", dest / "search.md")
    shutil.copy(root / "plots" / "pareto.png", dest / "plots" / "pareto.png")


if __name__ == "__main__":
    main()
