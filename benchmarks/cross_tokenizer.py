"""A student with its own tokenizer, taught by SmolLM2-135M-Instruct: CE vs the cross-tokenizer methods.

Run: .venv/bin/python benchmarks/cross_tokenizer.py [--seeds 3] [--steps 300]     (about 75 min on 2 cores)

Corpus: the 2,225 BBC News articles (one document each; 5% of them held out whole). The student's
tokenizer is a byte-level BPE of 8,192 tokens trained on the first 95% of the articles in file order
(the held-out 5% are drawn at random, so its merges saw most of their text; no model did) (SmolLM2's has
49,152); the student is a 4-layer Llama (hidden 256) built from config, 6.0M parameters (0.045× the
teacher). Same token budget for every arm: `--steps` steps of 8 blocks of 128 student tokens.
Arms (seeds 0..N-1, each in its own process, saved to benchmarks/work/cross_tokenizer/<arm>-<seed>.json,
so an interrupted run resumes):
  ce            the student alone, next-token CE (the baseline of the `uld` run)
  uld           0.5 × ULD + 0.5 × CE at aligned positions
  matched       0.5 × KL over tokens both vocabularies spell alike + 0.5 × CE
  matched_uld   both terms
  same_tok_kd   the same-tokenizer reference at equal size: SmolLM2's own tokenizer, forward KL + CE, a
                4-layer Llama narrowed to hidden 112 (6.1M parameters, most of them its 49k-row embedding)
  same_tok_large  the same shape as the cross students with SmolLM2's tokenizer (16.5M parameters)
Metric: held-out bits per byte (lower is better), the same text for every arm.
Writes benchmarks/results/cross_tokenizer.json.

`--corpus kjv` repeats the CE, ULD and matched arms on another corpus, the KJV Bible (passages of 20
verses as documents, a student tokenizer trained on it), to check that the default `kd.cross` holds
there too: benchmarks/work/cross_tokenizer_kjv/, benchmarks/results/cross_tokenizer_kjv.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import WORK, mean_std, write_result

OUT = WORK / "cross_tokenizer"
CORPUS = "bbc"
STUDENT = {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
           "num_key_value_heads": 2}
EQUAL = {"num_hidden_layers": 4, "hidden_size": 112, "intermediate_size": 320, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # SmolLM2's 49,152-token vocabulary at the cross students' size
ARMS = ("ce", "uld", "matched", "matched_uld", "same_tok_kd", "same_tok_large")


def corpus() -> Path:
    """The documents, one text file with `<|doc|>` between them (made once)."""
    path = OUT / ("bbc_articles.txt" if CORPUS == "bbc" else "kjv_passages.txt")
    if not path.is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        if CORPUS == "bbc":
            from distill.data.corpora import read_bbc_news

            docs = [row.text for row in read_bbc_news()]
        else:
            from distill.data.tokens import read_kjv

            verses = read_kjv()
            docs = [" ".join(verses[i:i + 20]) for i in range(0, len(verses), 20)]
        path.write_text("\n<|doc|>\n".join(docs))
    return path


def student_tokenizer(train_text: str) -> Path:
    """A byte-level BPE of 8,192 tokens trained on the first 95% of the documents (made once)."""
    out = OUT / "student_tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([train_text], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
                            ).save_pretrained(out)
    return out


def overrides(arm: str, seed: int, steps: int) -> list[str]:
    path = corpus()
    common = [f"output_dir={OUT / 'runs'}", "quiet=true", f"name={arm}-{seed}", "data.corpus=text", f"data.path={path}",
              "data.document_separator='<|doc|>'", "data.seq_len=128", "data.max_blocks=1200", "data.val_blocks=48",
              f"train.steps={steps}", "train.batch_size=8", f"train.eval_every={steps}", f"train.seed={seed}",
              "teacher.adapt=null", "student.layers=null", "kd.ratio=0.5"]
    if arm.startswith("same_tok"):
        shape = EQUAL if arm == "same_tok_kd" else STUDENT
        return [*common, f"student.config={json.dumps(shape)}", f"teacher.cache_dir={OUT / 'cache_same'}",
                "baseline=false"]
    common.append(f"student.config={json.dumps(STUDENT)}")
    train_docs = path.read_text().split("<|doc|>")
    tok = student_tokenizer("\n".join(train_docs[: int(0.95 * len(train_docs))]))
    cross = [*common, f"student.tokenizer={tok}", f"teacher.cache_dir={OUT / 'cache_cross'}"]
    if arm in ("ce", "uld"):
        return [*cross, "kd.cross=uld"]  # its baseline is the CE arm
    return [*cross, f"kd.cross={arm}", "baseline=false"]


def run_arm(arm: str, seed: int, steps: int) -> None:
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    run_dir = run_lm(load_lm_config(None, overrides(arm, seed, steps)), resume=True)
    models = json.loads((run_dir / "report.json").read_text())["models"]
    rows = {"ce": models.get("baseline"), "uld": models["distilled"]} if arm == "uld" else {arm: models["distilled"]}
    for name, m in rows.items():
        (OUT / f"{name}-{seed}.json").write_text(json.dumps({"bpb": m["bpb"], "ppl": m["ppl"], "params": m["params"],
                                                             "teacher_bpb": models["teacher"]["bpb"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--corpus", choices=("bbc", "kjv"), default="bbc")
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # a worker process
    args = p.parse_args()
    global OUT, CORPUS
    if args.corpus == "kjv":
        OUT, CORPUS = WORK / "cross_tokenizer_kjv", "kjv"
    if args.one:
        return run_arm(args.one[0], int(args.one[1]), args.steps)
    OUT.mkdir(parents=True, exist_ok=True)
    runs = ("uld", "matched", "matched_uld", "same_tok_kd", "same_tok_large") if CORPUS == "bbc" else ("uld", "matched")
    for seed in range(args.seeds):
        for arm in runs:  # the uld run writes the ce arm too
            if not (OUT / f"{arm}-{seed}.json").is_file():
                subprocess.run([sys.executable, __file__, "--corpus", CORPUS, "--steps", str(args.steps), "--one",
                                arm, str(seed)], check=True)
    if CORPUS == "kjv":
        return summarise_kjv(args)
    metrics: dict[str, float] = {}
    for arm in ARMS:
        rows = [json.loads((OUT / f"{arm}-{s}.json").read_text()) for s in range(args.seeds)]
        metrics[f"{arm}_bpb"], metrics[f"{arm}_bpb_std"] = mean_std([r["bpb"] for r in rows])
        metrics[f"{arm}_params"] = rows[0]["params"]
        if arm in ("ce", "same_tok_kd"):  # the teacher on each setting's own held-out blocks
            metrics["teacher_bpb" if arm == "ce" else "same_tok_teacher_bpb"] = rows[0]["teacher_bpb"]
    best = min(("uld", "matched", "matched_uld"), key=lambda a: metrics[f"{a}_bpb"])
    metrics["best_cross_bpb"] = metrics[f"{best}_bpb"]
    metrics["same_tokenizer_kd_bpb"] = metrics["same_tok_kd_bpb"]
    spread = max(metrics["ce_bpb_std"], metrics[f"{best}_bpb_std"])
    metrics["best_cross_beats_ce"] = float(metrics["ce_bpb"] - metrics["best_cross_bpb"] > 2 * spread)
    metrics["best_cross_vs_same_tokenizer"] = metrics["best_cross_bpb"] / metrics["same_tokenizer_kd_bpb"]
    write_result("cross_tokenizer", metrics, {"notes": f"best cross-tokenizer method: {best}; {args.steps} steps "
                                              f"x 8 x 128 tokens; {args.seeds} seeds"})



def summarise_kjv(args: argparse.Namespace) -> None:
    metrics: dict[str, float] = {}
    for arm in ("ce", "uld", "matched"):
        rows = [json.loads((OUT / f"{arm}-{s}.json").read_text()) for s in range(args.seeds)]
        metrics[f"{arm}_bpb"], metrics[f"{arm}_bpb_std"] = mean_std([r["bpb"] for r in rows])
        metrics.update({f"{arm}_bpb_seed{s}": r["bpb"] for s, r in enumerate(rows)})  # for paired comparisons
    metrics["teacher_bpb"] = json.loads((OUT / "ce-0.json").read_text())["teacher_bpb"]
    spread = max(metrics["ce_bpb_std"], metrics["matched_bpb_std"])
    metrics["matched_beats_ce"] = float(metrics["ce_bpb"] - metrics["matched_bpb"] > 2 * spread)
    metrics["matched_beats_uld"] = float(metrics["matched_bpb"] < metrics["uld_bpb"])
    write_result("cross_tokenizer_kjv", metrics, {"notes": f"KJV passages; {args.steps} steps x 8 x 128 tokens; "
                                                  f"{args.seeds} seeds"})


if __name__ == "__main__":
    main()
