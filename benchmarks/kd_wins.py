"""Does distillation beat the same student trained alone? Plain vs the default recipe, per scenario.

Run: .venv/bin/python benchmarks/kd_wins.py [--scenarios NAME ...] [--seeds 3]
Each (scenario, seed) runs in its own process and is saved to benchmarks/work/kd_wins/<scenario>-<seed>.json,
so an interrupted benchmark continues where it stopped; a final pass gathers every saved seed.

Arms of a scenario, same student, same number of optimizer steps:
  plain       labels only, the config's augmentation (the recipe soft_targets' baseline)
  plain_aug   labels only, the recipe's augmentation (the default recipe's baseline; the same run as
              plain when `auto` chooses cached soft targets)
  kd          the default recipe (`recipe: auto`), with the transfer set where the scenario has one
The plain arm a win is measured against is the better of plain and plain_aug. A scenario is won when
kd − plain > 2 × the larger of their standard deviations. Gap closed = (kd − plain) / (teacher − plain).
Beside it, the product's own verdict: `<scenario>_verdict_beats_seeds` counts the seeds whose report said
*beats* (the paired test of `distill.eval.verdict`), and `scenarios_won_verdict` the scenarios where
every seed's did; `<scenario>_pooled_verdict_beats` is the same test over the 3 seeds' test predictions
pooled (what a job with `seeds: 3` reports; classifier scenarios, from the saved students; lm and textkd:
every seed's beats), with `_pooled_diff/_low/_high`, and `scenarios_won_pooled_verdict` counts them.

Language-model scenarios (`distill lm`, `job="lm"`) compare held-out perplexity (lower is better) of
  plain       the same student, next-token CE only, the same tokens
  kd          the `distill lm` defaults
so there a win is plain − kd > 2 × the larger std, and gap closed = (plain − kd) / (plain − teacher),
where the teacher is the one that taught (the domain-adapted teacher when the defaults adapt it).

The teacher-generated-data scenario (`job="textkd"`) reads the students of benchmarks/step_by_step.py's
run (one run: the teacher is fine-tuned and labels the pool once, every seed's students reuse it):
  plain       label_only: the student fine-tuned on the gold labels of the labelled articles alone
  kd          step_by_step: the same, plus the fine-tuned teacher's labels and rationales on the pool
  pseudo_label  reported beside them: the teacher's labels on the pool without its rationales
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import WORK, mean_std, run_report, teacher_once, write_result
from safetensors.torch import load_file

OUT = WORK / "kd_wins"
CONFIGS = Path(__file__).parents[1] / "configs"
RECIPE_DEFAULTS = ["teacher.signal=auto", "kd.temperature=null", "kd.ratio=null"]  # the config's own KD settings out


@dataclass(frozen=True)
class Scenario:
    config: Path | None  # None: the built-in default job
    overrides: list[str]
    about: str
    shared_teacher: bool = False  # one teacher for every seed (trained once); else one per seed
    variant_of: str | None = None  # another setting of a scenario: reported, not counted in `scenarios`
    inputs: Callable[[], list[str]] | None = None  # overrides naming inputs made on first use
    job: str = "run"  # "run": `distill run` (accuracy); "lm": `distill lm` (held-out perplexity);
    # "textkd": the step_by_step benchmark's `distill textkd` run (accuracy of generated answers)


UNHEARD_VARIANTS = ["m2", "m4", "m6", "m7", "f3", "f5"]  # espeak-ng variants the dataset's 64 voices lack
MORE_VARIANTS = ["m8", "klatt", "klatt2", "klatt4", "Andy", "Annie", "steph", "john", "grandma", "grandpa", "max",
                 "linda"]  # 12 more, for the larger transfer set


def unheard_voices() -> list[str]:
    """`data.unlabeled` of int16 waves: the ten digits in 48 voices the dataset does not hold (its 8
    accents × 6 other voice variants, 3 speeds × 2 pitches, noise as in the dataset), labels dropped.
    Synthesised once (about 2 minutes)."""
    return [f"data.unlabeled={_voices('unheard_voices', UNHEARD_VARIANTS, seed=1)}"]


def more_unheard_voices() -> list[str]:
    """The 48 voices of `unheard_voices` and 96 more (8 accents × MORE_VARIANTS): 8,640 clips."""
    more = _voices("more_voices", MORE_VARIANTS, seed=2)
    both = OUT / "more_voices" / "all_waves.npy"
    if not both.is_file():
        np.save(both, np.concatenate([np.load(_voices("unheard_voices", UNHEARD_VARIANTS, seed=1)), np.load(more)]))
    return [f"data.unlabeled={both}"]


def _voices(name: str, variants: list[str], seed: int) -> Path:
    out = OUT / name
    npy = out / "waves.npy"
    if not npy.is_file():
        from distill.data.speech import DATA_FILE, synthesize

        synthesize(out, variants=variants, seed=seed)
        np.save(npy, load_file(out / DATA_FILE)["waves"].numpy())
    return npy


def bbc_text() -> list[str]:
    """The 2,225 BBC News articles as one text file: a corpus the teacher's pretraining knows (news)."""
    out = OUT / "bbc_news.txt"
    if not out.is_file():
        from distill.data.corpora import read_bbc_news

        OUT.mkdir(parents=True, exist_ok=True)
        out.write_text("\n\n".join(row.text for row in read_bbc_news()))
    return ["data.corpus=text", f"data.path={out}"]


SPEECH = [*RECIPE_DEFAULTS, "train.epochs=30", "train.optimizer.lr=1.0e-3"]  # the plain student trained well
FMNIST_FULL = [*RECIPE_DEFAULTS, "recipe=auto", "student.arch=cnn", "student.kwargs={widths: [8, 16], convs: 1, fc: 32}"]
BBC_10PCT = [*RECIPE_DEFAULTS, "data.label_fraction=0.1", "teacher.train.epochs=10", "losses=[]", "train.epochs=12",
             "train.optimizer.lr=1.0e-3"]
BBC_STUDENT = ("model: all-MiniLM-L6-v2, pretrained: false, num_layers: 2, hidden_size: 128, num_heads: 2, "
               "intermediate_size: 512")
LM_BUDGET = ["train.steps=150", "data.max_blocks=632", "data.val_blocks=32", "train.eval_every=150"]

SCENARIOS: dict[str, Scenario] = {
    "mnist5k_10pct": Scenario(None, [], "MNIST-5k, labels on 10% (350 images), the other 3,150 unlabelled; CNN "
                              "teacher trained on the 350, MLP 128 student; 60 epochs over labelled ∪ unlabelled "
                              "(the built-in default job)"),
    "spoken_digits": Scenario(CONFIGS / "spoken_digits.yaml", SPEECH,
        "spoken digits, full labels (45 voices) and 8,640 unlabelled clips of 144 other voices, tested on 13 "
        "unheard voices; CNN teacher (16/32/64) → CNN student (8/16, FC 32), 30 epochs at lr 1e-3",
        shared_teacher=True, inputs=more_unheard_voices),
    "spoken_digits_48_voices": Scenario(CONFIGS / "spoken_digits.yaml", SPEECH,
        "spoken_digits with a transfer set a third the size: 2,880 clips of 48 voices",
        shared_teacher=True, inputs=unheard_voices, variant_of="spoken_digits"),
    "spoken_digits_no_transfer": Scenario(CONFIGS / "spoken_digits.yaml", SPEECH,
        "spoken_digits without the unlabelled clips (at the config's 15 epochs and lr 2e-3 the plain student "
        "stalls on one seed in three: spoken_digits_config)", shared_teacher=True, variant_of="spoken_digits"),
    "bbc_10pct": Scenario(CONFIGS / "bbc_encoder.yaml", [*BBC_10PCT, f"student.kwargs={{{BBC_STUDENT}}}"],
        "BBC News, labels on 10% (~130 articles), the rest unlabelled; all-MiniLM-L6-v2 fine-tuned on the "
        "labelled articles → a scratch 2-layer encoder (width 128), 12 epochs", shared_teacher=True),
    "bbc_10pct_pooler": Scenario(CONFIGS / "bbc_encoder.yaml",
        [*BBC_10PCT, f"student.kwargs={{{BBC_STUDENT}, pooling: pooler}}"],
        "bbc_10pct with the student pooling through its encoder's first-token pooler (`pooling: pooler`: "
        "exports as a stock BertForSequenceClassification) instead of the mean", shared_teacher=True,
        variant_of="bbc_10pct"),
    "spoken_digits_tuned": Scenario(CONFIGS / "spoken_digits.yaml", [*SPEECH, "kd.tune={trials: 6, epochs: 0.25}"],
        "spoken_digits with T and α chosen on the validation voices by kd.tune (6 proxy trainings of 8 epochs)",
        shared_teacher=True, variant_of="spoken_digits"),
    "spoken_digits_config": Scenario(CONFIGS / "spoken_digits.yaml", RECIPE_DEFAULTS,
                                     "spoken_digits at the config's own 15 epochs and lr 2e-3",
                                     shared_teacher=True, variant_of="spoken_digits"),
    "spoken_digits_fm": Scenario(CONFIGS / "spoken_digits.yaml", [*SPEECH, "recipe=function_matching"],
        "spoken_digits with function matching forced (shifts + mixup on spectrograms)", shared_teacher=True,
        variant_of="spoken_digits"),
    "fmnist_full": Scenario(CONFIGS / "fashion_mnist.yaml", [*FMNIST_FULL, "train.optimizer.lr=3.0e-3"],
        "Fashion-MNIST, every label (54,000 training images); the fmnist_kd CNN teacher (32/64, FC 256) → the "
        "method table's small CNN (8/16, FC 32), 15 epochs at lr 3e-3 (the plain student's 90.76% beat its "
        "90.39% at the config's 1e-3 on seed 0)", shared_teacher=True),
    "fmnist_full_fm": Scenario(CONFIGS / "fashion_mnist.yaml", [*FMNIST_FULL, "recipe=function_matching"],
        "fmnist_full with function matching forced (shifts + mixup through the live teacher), at the config's "
        "lr 1e-3 (auto's choice before it measured the teacher's confidence)", shared_teacher=True,
        variant_of="fmnist_full"),
    "lm_kjv": Scenario(None, LM_BUDGET, "KJV Bible, SmolLM2-135M-Instruct → 1-layer student (0.24× the "
                       "parameters), 150 steps × 4 × 128 tokens (76,800), `distill lm` defaults", job="lm"),
    "lm_bbc": Scenario(None, LM_BUDGET, "BBC News articles as a corpus, same teacher, student and budget as "
                       "lm_kjv", job="lm", inputs=bbc_text),
    "bbc_generated": Scenario(None, [], "BBC News topics, 150 labelled articles and 1,000 unlabelled ones; "
        "SmolLM2-135M-Instruct fine-tuned on the labelled ones labels and rationalises the pool; a 4-layer "
        "student built from it, 400 steps × 8 rows, label-only vs step-by-step on labelled ∪ pool "
        "(benchmarks/step_by_step.py's run)", job="textkd"),
    "mnist5k_full": Scenario(None, ["data.label_fraction=1", "teacher.train.epochs=30", "train.epochs=25"],
                             "MNIST-5k with every label (3,500); CNN → MLP 128, 25 epochs", variant_of="mnist5k_10pct"),
    "mnist5k_full_oof": Scenario(None, ["data.label_fraction=1", "teacher.train.epochs=30", "train.epochs=25",
                                        "recipe=soft_targets", "teacher.out_of_fold=5"],
                                 "mnist5k_full with soft targets from 5 out-of-fold teachers (teacher.out_of_fold)",
                                 variant_of="mnist5k_10pct"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("SCENARIO", "SEED"), help="run one seed (in this process)")
    p.add_argument("--name", default="kd_wins", help="the results file's name (a partial re-run: another name)")
    p.add_argument("--merge", nargs="+", metavar="RESULT", help="write --name from partial re-runs' results files "
                   "(benchmarks/results/<RESULT>.json), their totals recomputed over every scenario they hold")
    args = p.parse_args()
    if args.one:
        run_seed(args.one[0], int(args.one[1]))
        return
    if args.merge:
        return merge(args.name, args.merge)
    for name in args.scenarios:
        for seed in range(args.seeds):
            if not (OUT / f"{name}-{seed}.json").is_file():  # each seed in a fresh process
                subprocess.run([sys.executable, __file__, "--one", name, str(seed)], check=True)
    write_result(args.name, metrics(args.scenarios, args.seeds), {"scenarios": {
        n: SCENARIOS[n].about for n in args.scenarios}})


TOTALS = ("scenarios", "scenarios_won", "scenarios_won_verdict", "scenarios_won_pooled_verdict")


def merge(name: str, parts: list[str]) -> None:
    """One results file from several partial re-runs (each seed's work files may be gone by then): the
    per-scenario keys as they are, the totals summed, the mean gap closed over every scenario."""
    from common import RESULTS

    metrics: dict[str, float] = dict.fromkeys(TOTALS, 0.0)
    about: dict[str, str] = {}
    gaps = 0.0
    for part in parts:
        record = json.loads((RESULTS / f"{part}.json").read_text())
        m = record["metrics"]
        for key in TOTALS:
            metrics[key] += m[key]
        gaps += m.get("mean_gap_closed", 0.0) * m["scenarios"]  # a variant-only part counts no scenario
        metrics.update({k: v for k, v in m.items() if k not in (*TOTALS, "mean_gap_closed")})
        about.update(record.get("scenarios", {}))
    metrics["mean_gap_closed"] = gaps / metrics["scenarios"]
    write_result(name, metrics, {"scenarios": about, "merged_from": parts})


def run_seed(name: str, seed: int) -> None:
    scenario = SCENARIOS[name]
    if scenario.job == "lm":
        return run_lm_seed(name, seed)
    if scenario.job == "textkd":
        return run_textkd_seed(name, seed)
    config = scenario.config
    common = [f"output_dir={OUT / 'runs'}", "quiet=true", f"teacher.cache_dir={OUT / 'cache'}", *scenario.overrides,
              *(scenario.inputs() if scenario.inputs else [])]
    if scenario.shared_teacher:
        weights = teacher_once(config, [f"output_dir={OUT / (scenario.variant_of or name)}", "quiet=true",
                                        *scenario.overrides])
        common += [f"teacher.checkpoint={weights}", f"train.seed={seed}"]
    else:
        common += [f"train.seed={seed}", f"teacher.train.seed={seed}"]
    start = time.perf_counter()
    auto = run_report(config, [*common, f"name={name}-auto-{seed}"])
    auto_s = time.perf_counter() - start
    recipe = auto["recipe"]
    same = recipe["recipe"] == "soft_targets" and recipe["signal"] == "cached"  # the plain arm's very settings
    plain = auto if same else run_report(config, [*common, f"name={name}-plain-{seed}", "recipe=soft_targets",
                                                  "teacher.signal=cached"])  # the same run when auto chose it
    row = {"teacher": auto["models"]["teacher"]["accuracy"], "plain": plain["models"]["baseline"]["accuracy"],
           "plain_aug": auto["models"]["baseline"]["accuracy"], "kd": auto["models"]["distilled"]["accuracy"],
           "soft_targets": plain["models"]["distilled"]["accuracy"], "recipe": auto["recipe"],
           "verdict": auto["verdict"], "wall_s_auto_run": auto_s}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))


def run_lm_seed(name: str, seed: int) -> None:
    """`distill lm` with its defaults (baseline included), one student seed; teacher products shared."""
    from distill.eval.doctor import lm_kd_settings
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    scenario = SCENARIOS[name]
    overrides = [f"output_dir={OUT / 'runs'}", "quiet=true", f"teacher.cache_dir={OUT / 'lm_cache' / name}",
                 *scenario.overrides, *(scenario.inputs() if scenario.inputs else []), f"train.seed={seed}",
                 f"name={name}-{seed}"]
    start = time.perf_counter()
    run_dir = run_lm(load_lm_config(None, overrides), resume=True)
    report = json.loads((run_dir / "report.json").read_text())
    models = report["models"]
    row = {"metric": "ppl", "teacher": models.get("teacher_adapted", models["teacher"])["ppl"],
           "teacher_as_given": models["teacher"]["ppl"], "plain": models["baseline"]["ppl"],
           "kd": models["distilled"]["ppl"], "kd_settings": lm_kd_settings(report), "teacher_adapt": report.get("teacher_adapt"),
           "tokens": report["data"]["tokens_seen"], "verdict": report["verdict"],
           "wall_s_auto_run": time.perf_counter() - start}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))


def run_textkd_seed(name: str, seed: int) -> None:
    """One seed's label-only, pseudo-label and step-by-step students of the step_by_step benchmark's
    run (resumed; it trains every seed it is missing, so later seeds find theirs done)."""
    import step_by_step

    from distill.recipes.textkd.pipeline import run_textkd

    cfg = step_by_step.job_config(seeds=[0, 1, 2])
    if seed not in cfg.seeds:
        raise SystemExit(f"{name}: the step_by_step run has seeds {cfg.seeds}; seed {seed} is not one of them")
    run_dir = run_textkd(cfg, resume=(cfg.output_dir / cfg.name / "config.yaml").is_file())
    report = json.loads((run_dir / "report.json").read_text())
    acc = {kind: json.loads((run_dir / "students" / f"{kind}-s{seed}" / "eval.json").read_text())["metrics"]["accuracy"]
           for kind in step_by_step.KINDS}
    row = {"teacher": report["teacher"]["metrics"]["accuracy"], "plain": acc["label_only"], "kd": acc["step_by_step"],
           "pseudo_label": acc["pseudo_label"], "student_steps": cfg.train.steps,
           "verdict": report["verdicts"]["step_by_step"],
           "train_examples": report["train_examples"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))


def textkd_metrics(name: str, rows: list[dict], m: dict[str, float]) -> tuple[float, bool]:
    """Per-scenario keys of the teacher-generated-data scenario (accuracy, %); returns (gap closed, won)."""
    stats = {arm: mean_std([100 * r[arm] for r in rows]) for arm in ("teacher", "plain", "kd", "pseudo_label")}
    for arm, (mean, std) in stats.items():
        m[f"{name}_{arm}_mean"], m[f"{name}_{arm}_std"] = mean, std
    (plain, plain_std), (kd, kd_std), teacher = stats["plain"], stats["kd"], stats["teacher"][0]
    m[f"{name}_gap_closed"] = gap = (kd - plain) / (teacher - plain) if teacher > plain else float("nan")
    m[f"{name}_student_steps"] = rows[0]["student_steps"]
    return gap, kd - plain > 2 * max(plain_std, kd_std)


def lm_metrics(name: str, rows: list[dict], m: dict[str, float]) -> float:
    """Per-scenario keys of an LM scenario (perplexities: lower is better); returns the gap closed."""
    stats = {arm: mean_std([r[arm] for r in rows]) for arm in ("teacher", "teacher_as_given", "plain", "kd")}
    (plain, _), (kd, _), teacher = stats["plain"], stats["kd"], stats["teacher"][0]
    for arm, (mean, std) in stats.items():
        m[f"{name}_{arm}_mean"], m[f"{name}_{arm}_std"] = mean, std
    m[f"{name}_gap_closed"] = gap = (plain - kd) / (plain - teacher) if plain > teacher else float("nan")
    m[f"{name}_tokens"] = rows[0]["tokens"]
    m[f"{name}_wall_s_auto_run"] = mean_std([r["wall_s_auto_run"] for r in rows])[0]
    return gap


def lm_won(name: str, m: dict[str, float]) -> bool:
    return m[f"{name}_plain_mean"] - m[f"{name}_kd_mean"] > 2 * max(m[f"{name}_plain_std"], m[f"{name}_kd_std"])


def verdict_keys(name: str, rows: list[dict], m: dict[str, float]) -> bool:
    """How many seeds' reports said *beats* (the paired test of `distill.eval.verdict`, one seed each;
    the textkd report's test pools its seeds, so every seed's row holds the same verdict); True when
    every one did."""
    beats = sum(r["verdict"]["outcome"] == "beats" for r in rows)
    m[f"{name}_verdict_beats_seeds"] = beats
    return beats == len(rows)


def pooled_verdict(name: str, seeds: int) -> dict:
    """The paired test of the distilled student against the plain one over every seed's test
    predictions pooled (as a job with `seeds: 3` reports it), from the runs' saved students; saved."""
    done = OUT / f"{name}-pooled.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch

    from distill.data.arrays import labels_of
    from distill.eval.metrics import predict
    from distill.eval.verdict import compare_classifiers
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.tools import trained_models

    correct: dict[str, list] = {"baseline": [], "distilled": []}
    for seed in range(seeds):
        run = OUT / "runs" / f"{name}-auto-{seed}"
        for stage, rows in correct.items():
            cfg = load_config(run / "config.yaml", [f"student.checkpoint={run / stage / 'model.safetensors'}"])
            if cfg.teacher.checkpoint is None:
                cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
                    update={"checkpoint": run / "teacher" / "model.safetensors"})})
            data, models = trained_models(cfg)
            rows.append((predict(models["student"], data.test).argmax(1) == labels_of(data.test)).double())
    verdict = compare_classifiers(torch.stack(correct["baseline"]), torch.stack(correct["distilled"])).to_dict()
    done.write_text(json.dumps(verdict, indent=2))
    return verdict


def metrics(names: list[str], seeds: int) -> dict[str, float]:
    m: dict[str, float] = {}
    won, gaps, held, pooled = 0, [], 0, 0
    for name in names:
        rows = [json.loads((OUT / f"{name}-{s}.json").read_text()) for s in range(seeds)]
        every_seed_beats = verdict_keys(name, rows, m)
        if SCENARIOS[name].job == "run":
            v = pooled_verdict(name, seeds)
            m[f"{name}_pooled_verdict_beats"] = float(v["outcome"] == "beats")
            m[f"{name}_pooled_diff"], m[f"{name}_pooled_low"], m[f"{name}_pooled_high"] = v["difference"], v["low"], v["high"]
        else:  # lm and textkd: the report's own test already pools what it holds
            m[f"{name}_pooled_verdict_beats"] = float(every_seed_beats)
        if SCENARIOS[name].variant_of is None:
            pooled += m[f"{name}_pooled_verdict_beats"]
        if SCENARIOS[name].variant_of is None:
            held += every_seed_beats
        if SCENARIOS[name].job == "textkd":
            gap, scenario_won = textkd_metrics(name, rows, m)
            if SCENARIOS[name].variant_of is None:
                won += scenario_won
                gaps.append(gap)
            continue
        if SCENARIOS[name].job == "lm":
            gap = lm_metrics(name, rows, m)
            if SCENARIOS[name].variant_of is None:
                won += lm_won(name, m)
                gaps.append(gap)
            continue
        stats = {arm: mean_std([100 * r[arm] for r in rows])
                 for arm in ("teacher", "plain", "plain_aug", "kd", "soft_targets")}
        best_plain = max(("plain", "plain_aug"), key=lambda a: stats[a][0])
        (plain, plain_std), (kd, kd_std), teacher = stats[best_plain], stats["kd"], stats["teacher"][0]
        gap = (kd - plain) / (teacher - plain) if teacher > plain else float("nan")
        if SCENARIOS[name].variant_of is None:
            won += kd - plain > 2 * max(plain_std, kd_std)
            gaps.append(gap)
        stats["plain_no_aug"] = stats.pop("plain")  # the row's "plain" arm: labels only, no augmentation
        stats["plain"] = (plain, plain_std)  # the better plain arm, which the win is measured against
        for arm, (mean, std) in stats.items():
            m[f"{name}_{arm}_mean"], m[f"{name}_{arm}_std"] = mean, std
        m[f"{name}_gap_closed"] = gap
        m[f"{name}_distilled_epochs"] = rows[0]["recipe"]["distilled_epochs"]
        m[f"{name}_baseline_epochs"] = rows[0]["recipe"]["baseline_epochs"]
        m[f"{name}_wall_s_auto_run"] = mean_std([r["wall_s_auto_run"] for r in rows])[0]
    m["scenarios"], m["scenarios_won"], m["scenarios_won_verdict"] = len(gaps), won, held
    m["scenarios_won_pooled_verdict"] = pooled
    if gaps:  # variants alone count no scenario
        m["mean_gap_closed"] = sum(gaps) / len(gaps)
    return m


if __name__ == "__main__":
    main()
