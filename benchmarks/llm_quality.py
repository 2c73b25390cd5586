"""LM distillation quality and the top-k teacher cache, on the KJV Bible (Debian bible-kjv).

Run: .venv/bin/python benchmarks/llm_quality.py          (about 1 hour on 2 CPU cores)

Teacher: SmolLM2-135M-Instruct (builtin). Student: 1 layer (the teacher's layer 0, its embeddings,
final norm and tied output layer): 0.24× the teacher's parameters. Same token budget for every arm
(`--steps` × 4 × 128 tokens, one pass over the same training blocks), 3 seeds each:

  ce           plain next-token cross-entropy (no teacher)
  forward_kl   KL(teacher ‖ student) from the top-64 cache (kd.ratio 1)
  reverse_kl   KL(student ‖ teacher) from the cache
  jsd          generalized JSD(β = 0.5) from the cache
  forward_kl_full   forward KL from the live teacher's full logits (1 seed: the cache's cost in quality)
  mix          0.5 × forward KL + 0.5 × CE (kd.ratio 0.5)
  reverse_kl_warm, jsd_warm   the divergence after 40 steps of CE only (kd.warm_start 40)
  adapted_forward_kl, adapted_mix   forward_kl and mix taught by the teacher fine-tuned on the training
               blocks first (teacher.adapt: 60 steps of CE at lr 1e-4, the `distill lm` stage)
  adapted_mix is the recipe of the built-in `distill lm` job: its perplexity is `kd_student_ppl`.
  adapted_mix_live   adapted_mix with the adapted teacher run live (full logits), the reference of
  adapted_mix_on_policy_late   the same, plus on-policy rounds in the second half of training
               (on_policy: fraction 0.5, start 0.5: half the batches of steps 60–119 are continuations
               the student samples from a 32-token prompt, scored by the teacher)

Held-out: perplexity, KL(teacher ‖ student) over the top-64 + tail bins of a validation cache, and
top-1 agreement. Writes benchmarks/results/llm_quality.json and llm_cache.json (bytes per token, and
cache_kl: KL(full teacher ‖ cached teacher) on held-out tokens, the cached distribution spreading its
tail mass uniformly over the other tokens). Finished runs are kept in benchmarks/work/llm/runs.jsonl,
so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import WORK, mean_std, write_result

from distill.data.tokens import TextSplits, pack_text, read_kjv, split_blocks
from distill.eval.lm import evaluate_lm
from distill.losses.config import TokenKDConfig
from distill.models import causal_lm as lm_models
from distill.recipes.lm.config import LMRunConfig, LMTeacherConfig, TeacherAdaptConfig
from distill.recipes.lm.pipeline import adapt_teacher
from distill.teachers.tokens import LiveLMTeacher, TopKCache, teacher_logits
from distill.training.config import LMTrainConfig, OnPolicyConfig
from distill.training.lm import fit_lm

TEACHER, K, SEQ, BATCH = "builtin:smollm2-135m-instruct", 64, 128, 4
ADAPT = TeacherAdaptConfig(steps=60, lr=1e-4)
# arm → loss settings, and whether the adapted teacher teaches; None: plain CE
ARMS: dict[str, dict | None] = {
    "ce": None, "forward_kl": {"kind": "forward_kl", "ratio": 1.0}, "reverse_kl": {"kind": "reverse_kl", "ratio": 1.0},
    "jsd": {"kind": "jsd", "ratio": 1.0}, "mix": {"kind": "forward_kl", "ratio": 0.5},
    "reverse_kl_warm": {"kind": "reverse_kl", "ratio": 1.0, "warm_start": 40},
    "jsd_warm": {"kind": "jsd", "ratio": 1.0, "warm_start": 40},
    "adapted_forward_kl": {"kind": "forward_kl", "ratio": 1.0, "adapted": True},
    "adapted_mix": {"kind": "forward_kl", "ratio": 0.5, "adapted": True},
    "adapted_mix_live": {"kind": "forward_kl", "ratio": 0.5, "adapted": True, "live": True},
    "adapted_mix_on_policy_late": {"kind": "forward_kl", "ratio": 0.5, "adapted": True, "live": True,
                                   "on_policy": OnPolicyConfig(fraction=0.5, start=0.5)},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-blocks", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--report-only", action="store_true", help="write the results of the runs finished so far")
    args = p.parse_args()
    torch.set_num_threads(2)
    work = WORK / "llm"
    tok = lm_models.load_tokenizer(TEACHER)
    teacher = lm_models.load_causal_lm(TEACHER)
    vocab = len(tok)
    n_train = args.steps * BATCH
    splits = split_blocks(pack_text(read_kjv(), tok, SEQ, max_blocks=n_train + args.val_blocks),
                          args.val_blocks / (n_train + args.val_blocks), seed=0)
    train, val = splits.train, splits.val
    identity = {"teacher": TEACHER, "tokenizer": lm_models.tokenizer_fingerprint(tok), "k": K, "vocab": vocab}
    caches = {name: TopKCache.build_or_open(teacher, blocks, work / f"cache_{name}", identity=identity)
              for name, blocks in (("train", train), ("val", val))}
    done = _done_runs(work / "runs.jsonl")
    adapted: dict[str, TopKCache] = {}
    if args.report_only:
        return write_quality_result(teacher, lm_models.student_from_teacher(teacher, layers=[0]), val, vocab, done, args)
    if not done:  # measured once, before the first run
        write_cache_result(teacher, val, caches["val"], vocab)
    # The baseline and the headline arm first, then the cache-vs-full check, then the other divergences.
    runs = ([(arm, seed) for seed in range(args.seeds) for arm in ("ce", "forward_kl")] + [("forward_kl_full", 0)]
            + [(arm, seed) for arm in ("jsd", "reverse_kl", "adapted_mix", "mix", "adapted_forward_kl",
                                       "reverse_kl_warm", "jsd_warm") for seed in range(args.seeds)]
            + [(arm, seed) for seed in range(args.seeds) for arm in ("adapted_mix_live", "adapted_mix_on_policy_late")])
    for arm, seed in runs:
        if (arm, seed) in done:
            continue
        spec = dict(ARMS.get(arm) or {"kind": "forward_kl", "ratio": 1.0})
        live, on_policy = spec.pop("live", False), spec.pop("on_policy", None)
        if spec.pop("adapted", False) and not adapted:
            adapted.update(_adapted_caches(teacher, tok, TextSplits(train, val), vocab, work, identity))
        source = adapted if (ARMS.get(arm) or {}).get("adapted") else caches
        signal = (LiveLMTeacher(teacher, vocab) if arm == "forward_kl_full" else
                  LiveLMTeacher(source["model"], vocab) if live else source["train"] if ARMS[arm] else None)
        start = time.perf_counter()
        student = lm_models.student_from_teacher(teacher, layers=[0])
        cfg = LMTrainConfig(steps=args.steps, batch_size=BATCH, eval_every=10**9, save_every=10**9,
                            warmup_steps=10, seed=seed, precision="no")
        cfg.optimizer.lr = args.lr
        out = fit_lm(student, train, train=cfg, kd=TokenKDConfig(**spec), vocab=vocab, teacher=signal,
                     on_policy=on_policy, pad_id=tok.pad_token_id, device="cpu", name=f"{arm} seed {seed}")
        metrics = evaluate_lm(out.model, val, vocab, teacher=caches["val"])  # KL to the teacher as given
        row = {"arm": arm, "seed": seed, **metrics, "seconds": time.perf_counter() - start}
        with open(work / "runs.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        done[(arm, seed)] = row
    write_quality_result(teacher, lm_models.student_from_teacher(teacher, layers=[0]), val, vocab, done, args)


def _adapted_caches(teacher, tok, splits: TextSplits, vocab: int, work: Path, identity: dict) -> dict:
    """The `distill lm` adaptation stage (trained once into work/adapted): the model, and its top-k caches."""
    cfg = LMRunConfig(teacher=LMTeacherConfig(model=TEACHER, adapt=ADAPT),
                      train=LMTrainConfig(batch_size=BATCH, precision="no"), device="cpu")
    model = adapt_teacher(cfg, teacher, tok, splits, vocab, work / "adapted", resume=True)
    ident = {**identity, "teacher": f"{TEACHER} adapted"}
    return {"model": model, **{name: TopKCache.build_or_open(model, blocks, work / f"cache_adapted_{name}", identity=ident)
                               for name, blocks in (("train", splits.train), ("val", splits.val))}}


def write_cache_result(teacher: torch.nn.Module, val, cache: TopKCache, vocab: int) -> None:
    """Bytes per token, and KL(full teacher ‖ top-k + uniform tail) over held-out tokens."""
    total, count = 0.0, 0
    for start in range(0, len(val), 4):
        batch = val.batch(torch.arange(start, min(len(val), start + 4)))
        with torch.inference_mode():
            log_p = torch.log_softmax(teacher_logits(teacher, batch, vocab), -1)  # (B, L, V)
        sig = cache.signal(batch)
        tail_each = sig.tail_logprob.float() - math.log(vocab - K)  # tail spread over the other tokens
        log_q = tail_each.expand_as(log_p).clone()
        log_q.scatter_(-1, sig.topk_indices, sig.topk_logprobs.float())
        log_q = torch.log_softmax(log_q, -1)  # stored values are float16: renormalise
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        mask = batch["attention_mask"]
        total, count = total + float(kl[mask].sum()), count + int(mask.sum())
    write_result("llm_cache", {"bytes_per_token": cache.bytes_per_token, "cache_kl": total / count, "k": K},
                 {"notes": "SmolLM2-135M-Instruct on held-out KJV blocks; float16 log-probs, int16 ids, "
                           "float16 log tail mass per token"})


def write_quality_result(teacher, student, val, vocab, done, args) -> None:
    done = {key: row for key, row in done.items() if row}
    t = evaluate_lm(teacher, val, vocab)
    adapted = Path(WORK / "llm" / "adapted" / "model")
    metrics = {"teacher_ppl": t["ppl"], "params_ratio": lm_models.count_parameters(student)
               / lm_models.count_parameters(teacher), "steps": args.steps, "tokens": args.steps * BATCH * SEQ}
    for arm in list(ARMS) + ["forward_kl_full"]:
        rows = [r for (a, _), r in done.items() if a == arm]
        metrics[f"{arm}_seeds"] = len(rows)
        if not rows:
            continue
        for key in ("ppl", "kl_teacher", "agreement"):
            m, s = mean_std([r[key] for r in rows])
            metrics[f"{arm}_{key}_mean"], metrics[f"{arm}_{key}_std"] = m, s
    if (adapted / "config.json").is_file():
        metrics["adapted_teacher_ppl"] = evaluate_lm(lm_models.load_causal_lm(str(adapted)), val, vocab)["ppl"]
    metrics["ce_student_ppl"] = metrics["ce_ppl_mean"]
    metrics["kd_student_ppl"] = metrics.get("adapted_mix_ppl_mean", metrics["forward_kl_ppl_mean"])
    carried = sorted({r["arm"] for r in done.values() if "carried" in r})
    write_result("llm_quality", metrics, {
        "runs": sorted(done.values(), key=lambda r: (r["arm"], r["seed"])),
        "notes": (f"arms {', '.join(carried)}: runs measured earlier with the same code path, data and seeds, "
                  "kept (each row's `carried` is its date)") if carried else ""})


def _done_runs(path: Path) -> dict[tuple[str, int], dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["arm"], r["seed"]): r for r in rows}


if __name__ == "__main__":
    main()
