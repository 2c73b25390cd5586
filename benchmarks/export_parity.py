"""Do exported students answer like the trained ones, in the runtimes users deploy them with?

Run: .venv/bin/python benchmarks/export_parity.py        (about 10 min on 2 cores when the runs exist)

Needs `pip install 'distill[gguf]'` (llama.cpp's Python binding, built from source) for the GGUF part.
Uses the students of benchmarks/kd_wins.py (seed 0), and makes them first if absent:
- text classifier: the `bbc_10pct` distilled student (2-layer MiniLM-initialised encoder, BBC News):
  `--format hf` loaded back by `AutoModelForSequenceClassification` (trust_remote_code) and `--format
  onnx` run by ONNX Runtime, each against PyTorch on the config's whole test split (445 articles);
- causal LM: the `lm_bbc` distilled student (1 layer of SmolLM2-135M, 31.9M parameters) as GGUF f16,
  q8_0 and q4_0, run by llama.cpp on the corpus file's last 40 paragraphs (blank-line separated; the
  end of the last articles, past the blocks the student trained on), in blocks of 128 tokens: the share of positions whose next-token arg-max matches the
  PyTorch student's, and the teacher's (the domain-adapted SmolLM2-135M that taught it).
Writes benchmarks/results/export_parity.json.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import WORK, write_result

from kd_wins import OUT as KD_WINS, run_seed

OUT = WORK / "export_parity"


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def classifier(metrics: dict[str, float]) -> None:
    from distill.core.config import migrate, read_yaml
    from distill.recipes.classify.config import RunConfig, load_config
    from distill.recipes.classify.tools import export_trained

    run = KD_WINS / "runs" / "bbc_10pct-auto-0"
    if not (run / "distilled" / "model.safetensors").is_file():
        run_seed("bbc_10pct", 0)
    saved = migrate(read_yaml(run / "config.yaml"), RunConfig.renamed)  # a run saved under older key names
    cfg = load_config(saved, [f"student.checkpoint={run / 'distilled' / 'model.safetensors'}"])
    for fmt, out in (("hf", OUT / "bbc_student_hf"), ("onnx", OUT / "bbc_student.onnx")):
        result = export_trained(cfg, "student", fmt, out, check=True, int8=False)
        name = "hf_classifier" if fmt == "hf" else "onnx"
        metrics |= {f"{name}_agreement": result["parity"]["agreement"],
                    f"{name}_max_abs_diff": result["parity"]["max_abs_diff"], f"{name}_size_mb": size_mb(out)}
    metrics["classifier_test_examples"] = result["parity"]["n"]


def language_model(metrics: dict[str, float], types: list[str]) -> None:
    from distill.recipes.lm.tools import export_lm_gguf

    run = KD_WINS / "runs" / "lm_bbc-0"
    if not (run / "distilled" / "model" / "config.json").is_file():
        run_seed("lm_bbc", 0)
    teacher = sorted((KD_WINS / "lm_cache" / "lm_bbc").glob("adapted-*/model"))
    held_out = OUT / "bbc_last40.txt"
    paragraphs = (KD_WINS / "bbc_news.txt").read_text().split("\n\n")
    held_out.write_text("\n\n".join(paragraphs[-40:]))
    metrics["student_size_mb"] = size_mb(run / "distilled" / "model" / "model.safetensors")
    for qtype in types:
        result = export_lm_gguf(run / "distilled" / "model", OUT / f"lm_student-{qtype}.gguf", qtype,
                                check_text=held_out, teacher=str(teacher[-1]) if teacher else None)
        check, key = result["check"], {"q8_0": "q8", "q4_0": "q4"}.get(qtype, qtype)
        metrics |= {f"gguf_{key}_agreement": check["top1_agreement"], f"gguf_{key}_size_mb": result["size_mb"],
                    f"gguf_{key}_tokenization_match": check["tokenization_match"]}
        if "teacher_top1_agreement" in check:
            metrics[f"gguf_{key}_teacher_agreement"] = check["teacher_top1_agreement"]
            metrics["torch_teacher_agreement"] = check["torch_teacher_top1_agreement"]
        metrics["gguf_positions"] = check["positions"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"])
    args = p.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    metrics: dict[str, float] = {}
    classifier(metrics)
    language_model(metrics, args.types)
    write_result("export_parity", metrics, {"notes": "text classifier: bbc_10pct distilled student (kd_wins seed 0), "
                                            "whole test split; LM: lm_bbc distilled student vs its adapted "
                                            "teacher on the last 40 paragraphs of the BBC corpus file, llama.cpp via llama-cpp-python"})


if __name__ == "__main__":
    main()
