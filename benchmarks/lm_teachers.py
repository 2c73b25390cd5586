"""Several LM teachers: a student trained on news and scripture, taught by one general teacher, by two
specialists mixed per token (fixed or confidence weights), or by the specialist its row names (route).

Run: .venv/bin/python benchmarks/lm_teachers.py [--seeds 3]     (about 85 min on 2 cores; resumable)

Corpus: one JSONL file of 600 BBC News articles and 600 KJV passages (8 verses each), shuffled, each
row with a `domain` key (news / bible); rows packed into 128-token blocks, 5% of the rows held out
whole. The general teacher is SmolLM2-135M-Instruct as given. The two specialists are SmolLM2
fine-tuned (60 steps of next-token CE, lr 1e-4: `teacher.adapt`'s defaults) on the training blocks
of their own domain only, once, under benchmarks/work/lm_teachers/specialists/. Students: the
1-layer student built from the teacher's first layer (0.24× its parameters), 150 steps × 4 blocks
(76,800 tokens, `kd_wins`' LM budget), seeds 0..N-1, each arm and seed in its own process:
  ce          next-token CE alone (the baseline of the `general` run)
  general     0.5 × forward KL to the general teacher + 0.5 × CE
  adapted     the same with one teacher fine-tuned on all the training blocks (`teacher.adapt`, the
              same 60 steps): the strongest single teacher, the fair comparison for two specialists
  mix         the two specialists, each divergence at weight 0.5 per token
  confidence  the two specialists, weighed per token by their probability of the actual next token
  route       each row's tokens learn from the specialist its `domain` key names
Metric: held-out perplexity (and bits per byte) over the same held-out blocks, mean ± std.
Writes benchmarks/results/lm_teachers.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from common import WORK, mean_std, write_result

OUT = WORK / "lm_teachers"
ARMS = ("ce", "general", "adapted", "mix", "confidence", "route")
SINGLE = ("general", "adapted")
SEVERAL = ("mix", "confidence", "route")
DOMAINS = ("news", "bible")


def corpus() -> Path:
    """The shuffled JSONL of both domains (made once)."""
    path = OUT / "news_and_bible.jsonl"
    if path.is_file():
        return path
    from distill.data.corpora import read_bbc_news
    from distill.data.tokens import read_kjv

    verses = read_kjv()
    passages = [" ".join(verses[i:i + 8]) for i in range(0, 8 * 600, 8)]
    news = [row.text for row in read_bbc_news()][:600]
    rows = [{"text": t, "domain": "news"} for t in news] + [{"text": t, "domain": "bible"} for t in passages]
    random.Random(0).shuffle(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def common(seed: int, name: str) -> list[str]:
    return [f"output_dir={OUT / 'runs'}", "quiet=true", f"name={name}-{seed}", "data.corpus=jsonl",
            f"data.path={corpus()}", "data.packing=true", "data.seq_len=128", "data.max_blocks=632",
            "data.val_blocks=48", "train.steps=150", "train.batch_size=4", "train.eval_every=150",
            f"train.seed={seed}", "teacher.adapt=null", "student.layers=[0]", f"teacher.cache_dir={OUT / 'cache'}"]


def specialists() -> dict[str, Path]:
    """SmolLM2 fine-tuned on each domain's training blocks (the run's own split), made once."""
    from distill.data.tokens import TextSplits, blocks_subset
    from distill.models import causal_lm as lm_models
    from distill.recipes.lm.config import TeacherAdaptConfig, load_lm_config
    from distill.recipes.lm.data import load_text
    from distill.recipes.lm.pipeline import adapt_teacher

    out = {d: OUT / "specialists" / d for d in DOMAINS}
    if all((p / "model" / "config.json").is_file() for p in out.values()):
        return {d: p / "model" for d, p in out.items()}
    cfg = load_lm_config(None, [*common(0, "split"), "teacher.name=general",
                                "teacher.others=[{name: news, model: x}, {name: bible, model: x}]",
                                "teacher.route=domain"])
    tok = lm_models.load_tokenizer(cfg.teacher.model)
    data = load_text(cfg, tok)
    teacher = lm_models.load_causal_lm(cfg.teacher.model)
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"adapt": TeacherAdaptConfig()}),
                                 "quiet": False})
    for i, domain in enumerate(DOMAINS, start=1):
        route = data.train.teacher_route
        mine = ((route == i).sum(1) > (route >= 0).sum(1) // 2).nonzero().squeeze(1)  # mostly this domain
        print(f"{domain}: {len(mine)} of {len(route)} training blocks")
        own = TextSplits(blocks_subset(data.train, mine), data.val)
        adapt_teacher(cfg, teacher, tok, own, len(tok), out[domain], resume=True)
    return {d: p / "model" for d, p in out.items()}


def overrides(arm: str, seed: int) -> list[str]:
    if arm == "general":
        return common(seed, arm)  # with its CE baseline
    if arm == "adapted":  # the specialists' fine-tuning settings, on every training block
        from distill.recipes.lm.config import TeacherAdaptConfig

        return [*common(seed, arm), "baseline=false", f"teacher.adapt={json.dumps(TeacherAdaptConfig().model_dump())}"]
    models = specialists()
    others = ", ".join(f"{{name: {d}, model: '{models[d]}'}}" for d in DOMAINS)
    extra = {"mix": [], "confidence": ["teacher.weighting=confidence"], "route": ["teacher.route=domain"]}[arm]
    return [*common(seed, arm), "baseline=false", "teacher.name=general", "teacher.weight=0",
            f"teacher.others=[{others}]", *extra]


def run_arm(arm: str, seed: int) -> None:
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    run_dir = run_lm(load_lm_config(None, overrides(arm, seed)), resume=True)
    models = json.loads((run_dir / "report.json").read_text())["models"]
    rows = {"ce": models["baseline"], "general": models["distilled"]} if arm == "general" else {arm: models["distilled"]}
    for name, m in rows.items():
        teachers = {k: v["ppl"] for k, v in models.items() if k.startswith("teacher")}
        (OUT / f"{name}-{seed}.json").write_text(json.dumps({"ppl": m["ppl"], "bpb": m["bpb"], "teachers": teachers}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # a worker process
    args = p.parse_args()
    if args.one:
        return run_arm(args.one[0], int(args.one[1]))
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "import lm_teachers; lm_teachers.specialists()"], check=True,
                   cwd=Path(__file__).parent)
    for seed in range(args.seeds):
        for arm in ARMS[1:]:  # the general run writes the ce arm too
            if not (OUT / f"{arm}-{seed}.json").is_file():
                subprocess.run([sys.executable, __file__, "--one", arm, str(seed)], check=True)
    metrics: dict[str, float] = {}
    for arm in ARMS:
        rows = [json.loads((OUT / f"{arm}-{s}.json").read_text()) for s in range(args.seeds)]
        metrics[f"{arm}_ppl"], metrics[f"{arm}_ppl_std"] = mean_std([r["ppl"] for r in rows])
        metrics[f"{arm}_bpb"], metrics[f"{arm}_bpb_std"] = mean_std([r["bpb"] for r in rows])
        metrics.update({f"{arm}_ppl_seed{s}": r["ppl"] for s, r in enumerate(rows)})  # for paired comparisons
    teachers = json.loads((OUT / "route-0.json").read_text())["teachers"]
    metrics.update({f"{k}_ppl": v for k, v in teachers.items()})  # teacher (general), teacher_news, teacher_bible
    metrics["teacher_adapted_ppl"] = json.loads((OUT / "adapted-0.json").read_text())["teachers"]["teacher_adapted"]
    best = min(SEVERAL, key=lambda a: metrics[f"{a}_ppl"])
    one = min(SINGLE, key=lambda a: metrics[f"{a}_ppl"])
    metrics["best_several_ppl"], metrics["best_one_ppl"] = metrics[f"{best}_ppl"], metrics[f"{one}_ppl"]
    spread = max(metrics[f"{one}_ppl_std"], metrics[f"{best}_ppl_std"])
    metrics["several_beat_one"] = float(metrics["best_one_ppl"] - metrics["best_several_ppl"] > 2 * spread)
    write_result("lm_teachers", metrics, {"notes": f"best of several teachers: {best}; best single: {one}; "
                                          f"150 steps x 4 x 128 tokens; "
                                          f"{args.seeds} seeds"})


if __name__ == "__main__":
    main()
