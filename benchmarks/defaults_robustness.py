"""Do the defaults hold on data nobody tuned them on? Plain training with the API's defaults, distillation
with the API's defaults (`distill.distill(teacher, student, train, val_data=val)`, no recipe, no budget
given) and a careful plain baseline, 3 seeds each, in settings of other sizes, domains and teachers.

    python benchmarks/defaults_robustness.py                  # every setting, 3 seeds (resumable)
    python benchmarks/defaults_robustness.py --settings digits8_full --seeds 3

Each (setting, seed) runs in its own process and writes `benchmarks/work/defaults_robustness/<setting>-<seed>.json`
(a finished one is not run again); the teacher of a setting is trained once (seed 0) and reused, as a
user's own teacher would be. The careful plain baseline is the best on validation of learning rates
1e-3 and 3e-3 at the steps the plain default ran (its budget as grown, `distill.training.budget`) and
at 4× them. Test accuracy on each setting's held-out test split.

Language-model settings (`LM_SETTINGS`: a corpus other than the KJV and BBC news, one of them source
code) run `distill.lm` with the built-in job's defaults on the corpus (`data.corpus: text`, 800 blocks
of 128 tokens drawn at random across documents; SmolLM2-135M-Instruct adapted to the corpus, a 1-layer
student), which trains the plain CE student beside the distilled one; their arms are bits per byte on
the held-out documents, and their difference is in percent of the plain student's bits per byte
(positive: the distilled student is better). The careful plain baseline of an LM setting is the better
on the held-out documents of the job's CE student and the CE student of the job at 3× its learning
rate (same steps; that job's distilled student is kept as `distilled_lr3x`). The
teacher's adaptation and logit cache are computed once per corpus and shared by the seeds.

Per setting: `<setting>_{plain_default,distilled_default,plain_careful,teacher}_mean/_std` (points), the
distilled − plain-default difference per seed and its mean and std, the recipe the pilot chose per seed,
and the pilot's share of the distilled job's wall time. Summary keys (the issue's): `settings`,
`default_never_worse` (settings where the mean difference ≥ −2 × its std over seeds), `default_wins`
(mean difference > 2 × its std), `worst_gap_pts` (the most negative mean difference), `pilot_share` (max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import robustness_data as rd  # noqa: E402
from common import WORK, mean_std, write_result  # noqa: E402

import distill  # noqa: E402
from distill.eval.metrics import predict  # noqa: E402
from distill.recipes.lm.config import load_lm_config  # noqa: E402

OUT = WORK / "defaults_robustness"


@dataclass
class Setting:
    about: str
    data: Callable[[], rd.Data]
    teacher: Callable[[], nn.Module]
    student: Callable[[], nn.Module]
    teacher_train: dict  # distill.train options for the teacher
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m  # what the user hands over as the teacher


def _digits(fraction: float = 1.0) -> rd.Data:
    return rd.split(*rd.digits8(), 1000, 297, fraction)


def _letters(fraction: float = 1.0) -> rd.Data:
    x, y = _cached("letters32", rd.letters32)
    return rd.split(x, y, 2600, 780, fraction)


def _text() -> rd.Data:
    x, y = _cached("docstrings", lambda: rd.docstrings()[:2])
    n = len(y)
    return rd.split(x, y, int(0.6 * n), int(0.15 * n))


def _cached(name: str, make: Callable[[], tuple]) -> tuple:
    path = OUT / "data" / f"{name}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(make(), path)
    return torch.load(path)


CNN_TRAIN = {"steps": 1500, "lr": 2e-3, "augment": {"shift": 1}}
SETTINGS: dict[str, Setting] = {
    "digits8_full": Setting("8×8 digits (scikit-learn), every label: 1,000 / 297 / 500; CNN teacher, MLP 64-32 student",
                            _digits, lambda: rd.CNN(1, 8, 10), lambda: rd.mlp(64, [32], 10), CNN_TRAIN),
    "digits8_10pct": Setting("8×8 digits, labels on 10% (100), the other 900 unlabelled; teacher trained on the 100",
                             lambda: _digits(0.1), lambda: rd.CNN(1, 8, 10), lambda: rd.mlp(64, [32], 10), CNN_TRAIN),
    "digits8_unsure_teacher": Setting("digits8_full with an unsure teacher: the same CNN's logits ÷ 4 (mean top-1 "
                                      "far from one-hot, as after label smoothing)", _digits,
                                      lambda: rd.CNN(1, 8, 10), lambda: rd.mlp(64, [32], 10), CNN_TRAIN,
                                      wrap=lambda m: rd.Unsure(m, 4.0)),
    "letters32_full": Setting("letters A–Z rendered at 32×32 in 30 typefaces, every label: 2,600 / 780 / 1,040; "
                              "CNN teacher, MLP 1024-64 student", _letters, lambda: rd.CNN(1, 32, 26),
                              lambda: rd.mlp(1024, [64], 26), {**CNN_TRAIN, "steps": 2000}),
    "letters32_10pct": Setting("letters32 with labels on 10% (260), the other 2,340 unlabelled", lambda: _letters(0.1),
                               lambda: rd.CNN(1, 32, 26), lambda: rd.mlp(1024, [64], 26), {**CNN_TRAIN, "steps": 2000}),
    "breast_cancer": Setting("breast-cancer rows (30 features, 2 classes): 300 / 100 / 169; MLP 256-256 teacher, "
                             "MLP 4 student", lambda: rd.split(*rd.breast_cancer(), 300, 100),
                             lambda: rd.mlp(30, [256, 256], 2), lambda: rd.mlp(30, [4], 2), {"steps": 1000, "lr": 1e-3}),
    "digits_features_10pct": Setting("the 8×8 digits as 64 feature columns, labels on 10%; MLP 512-512 teacher, MLP 16 "
                                     "student", lambda: rd.split(*rd.digits_features(), 1000, 297, 0.1),
                                     lambda: rd.mlp(64, [512, 512], 10), lambda: rd.mlp(64, [16], 10),
                                     {"steps": 1000, "lr": 1e-3}),
    "spoken_commands": Setting("ten spoken command words (espeak-ng, 16 voices), log-mel 40×101, split by voice: "
                               "600 / 120 / 240 clips; spectrogram CNN teacher, MLP 4040-64 student",
                               lambda: rd.spoken_commands(OUT / "data" / "spoken_commands"),
                               lambda: rd.SpectrogramCNN(10), lambda: rd.mlp(40 * 101, [64], 10),
                               {"steps": 1500, "lr": 2e-3}),
    "docstrings": Setting("stdlib docstrings → their package (10 classes, word ids); Transformer teacher, bag-of-words "
                          "student (24-d)", _text, lambda: rd.TextTeacher(rd.TEXT_CLASSES),
                          lambda: rd.BagOfWords(rd.TEXT_CLASSES), {"steps": 1500, "lr": 5e-4}),
}


@dataclass
class LMSetting:
    about: str
    corpus: Callable[[Path], Path]  # writes the corpus file at the path given, returns it


LM_SETTINGS: dict[str, LMSetting] = {
    "python_source": LMSetting("Python standard library source (167 modules, 4.7 MB of code), `distill lm` "
                               "defaults: SmolLM2-135M-Instruct → 1-layer student", rd.python_source),
    "python_docs": LMSetting("Python's reference documentation (79 topics, 0.47 MB of prose), `distill lm` "
                             "defaults", rd.python_docs),
}
LM_BLOCKS = 800  # the corpus as a user's data: this many training blocks (the job's 300 steps of 4: 1.5 epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="*", default=[*SETTINGS, *LM_SETTINGS])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("SETTING", "SEED"), help="run one seed (in this process)")
    p.add_argument("--table", action="store_true", help="print the results file as BENCHMARKS.md's table")
    args = p.parse_args()
    if args.one:
        (run_lm_seed if args.one[0] in LM_SETTINGS else run_seed)(args.one[0], int(args.one[1]))
        return
    if args.table:
        print(table(args.settings, args.seeds))
        return
    for name in args.settings:
        for seed in range(args.seeds):
            if not (OUT / f"{name}-{seed}.json").is_file():  # each seed in a fresh process
                print(f"{name} seed {seed}", flush=True)
                subprocess.run([sys.executable, __file__, "--one", name, str(seed)], check=True)
    write_result("defaults_robustness", metrics(args.settings, args.seeds),
                 {"settings": {n: (SETTINGS.get(n) or LM_SETTINGS[n]).about for n in args.settings}})


def teacher_of(name: str, data: rd.Data) -> nn.Module:
    """The setting's teacher, trained once on its labelled examples (seed 0) and kept."""
    s = SETTINGS[name]
    path = OUT / "teachers" / f"{name}.pt"
    torch.manual_seed(0)
    model = s.teacher()
    if path.is_file():
        model.load_state_dict(torch.load(path))
    else:
        opts = dict(s.teacher_train)
        model = distill.train(model, data.train, val_data=data.val, quiet=True, **opts).model
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return s.wrap(model.eval())


def accuracy(model: nn.Module, data: rd.Data) -> tuple[float, list[bool]]:
    correct = predict(model, data.test).argmax(-1) == data.test.labels
    return 100 * float(correct.float().mean()), correct.tolist()


def run_seed(name: str, seed: int) -> None:
    torch.set_num_threads(1)  # one process at a time, one thread: the timings of every arm alike
    s = SETTINGS[name]
    data = s.data()
    teacher = teacher_of(name, data)

    def student() -> nn.Module:
        torch.manual_seed(1000 + seed)
        return s.student()

    row: dict = {"teacher": accuracy(teacher, data)[0]}
    torch.manual_seed(seed)
    plain = distill.train(student(), data.train, val_data=data.val, quiet=True, seed=seed)
    row["plain_default"], row["plain_default_correct"] = accuracy(plain.model, data)
    start = time.perf_counter()
    torch.manual_seed(seed)
    kd = distill.distill(teacher, student(), data.train, val_data=data.val, unlabeled=data.unlabeled, quiet=True,
                         seed=seed)
    wall = time.perf_counter() - start
    row["distilled_default"], row["distilled_default_correct"] = accuracy(kd.model, data)
    row["recipe"], row["pilot"] = kd.plan["name"], kd.plan["pilot"]
    row["pilot_share"] = kd.seconds["pilot"] / wall
    row["job_seconds"] = wall
    default_steps = len(plain.history) and plain.history[-1]["step"]
    careful = []
    for lr in (1e-3, 3e-3):
        for steps in (default_steps, 4 * default_steps):
            r = distill.train(student(), data.train, val_data=data.val, quiet=True, seed=seed, lr=lr, steps=steps)
            best = max(r.history, key=lambda h: (h["val_accuracy"], -h["val_nll"]))
            careful.append((best["val_accuracy"], -best["val_nll"], accuracy(r.model, data)[0], lr, steps))
    best = max(careful)
    row["plain_careful"], row["plain_careful_lr"], row["plain_careful_steps"] = best[2], best[3], best[4]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("correct") and k != "pilot"}), flush=True)


def run_lm_seed(name: str, seed: int) -> None:
    """One seed of an LM setting: the job with its defaults on the corpus (plain CE and distilled students),
    then the job at 3× the learning rate (its CE student: the careful baseline's other candidate); bits per
    byte on the held-out documents."""
    torch.set_num_threads(1)
    work = OUT / "lm"
    corpus = LM_SETTINGS[name].corpus(OUT / "data" / f"{name}.txt")
    common = {"data.corpus": "text", "data.path": str(corpus), "data.document_separator": rd.DOC_SEPARATOR,
              "data.max_blocks": LM_BLOCKS, "teacher.cache_dir": str(work / f"{name}-teacher"), "train.seed": seed}
    start = time.perf_counter()
    job = distill.lm(overrides={**common, "name": f"{name}-{seed}", "output_dir": str(work)},
                     resume=(work / f"{name}-{seed}").is_dir()).report  # a job killed part-way continues
    wall = time.perf_counter() - start
    lr = 3 * load_lm_config(None, []).train.optimizer.lr  # the built-in job's learning rate, tripled
    fast = distill.lm(overrides={**common, "name": f"{name}-{seed}-lr3x", "output_dir": str(work),
                                 "train.optimizer.lr": lr}, resume=(work / f"{name}-{seed}-lr3x").is_dir()).report
    bpb = {k: m["bpb"] for k, m in job["models"].items()}
    row = {"teacher": bpb.get("teacher_adapted", bpb["teacher"]), "plain_default": bpb["baseline"],
           "distilled_default": bpb["distilled"], "plain_careful": min(bpb["baseline"], fast["models"]["baseline"]["bpb"]),
           "distilled_lr3x": fast["models"]["distilled"]["bpb"],
           "unit": "bits per byte", "recipe": "forward KL 0.5 + CE 0.5 (job default)", "pilot_share": 0.0,
           "job_seconds": wall, "verdict": job["verdict"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if k != "verdict"}), flush=True)


def gap(row: dict) -> float:
    """Distilled − plain (default): accuracy points, or for an LM the share of the plain student's bits per
    byte saved, in percent."""
    if row.get("unit") == "bits per byte":
        return 100 * (row["plain_default"] - row["distilled_default"]) / row["plain_default"]
    return row["distilled_default"] - row["plain_default"]


def metrics(names: list[str], seeds: int) -> dict[str, float]:
    m: dict[str, float] = {}
    never_worse = wins = 0
    worst = float("inf")
    shares = []
    for name in names:
        rows = [json.loads((OUT / f"{name}-{s}.json").read_text()) for s in range(seeds)]
        for arm in ("teacher", "plain_default", "distilled_default", "plain_careful", "distilled_lr3x"):
            if arm in rows[0]:  # distilled_lr3x: LM settings only
                m[f"{name}_{arm}_mean"], m[f"{name}_{arm}_std"] = mean_std([r[arm] for r in rows])
        diffs = [gap(r) for r in rows]
        for s, d in enumerate(diffs):
            m[f"{name}_diff_seed{s}"] = d
        mean, std = mean_std(diffs)
        m[f"{name}_diff_mean"], m[f"{name}_diff_std"] = mean, std
        m[f"{name}_vs_careful_mean"] = statistics.mean(gap({**r, "plain_default": r["plain_careful"]}) for r in rows)
        never_worse += mean >= -2 * std
        wins += mean > 2 * std
        worst = min(worst, mean)
        shares += [r["pilot_share"] for r in rows]
        m[f"{name}_pilot_share_max"] = max(r["pilot_share"] for r in rows)
    m.update(settings=len(names), default_never_worse=never_worse, default_wins=wins, worst_gap_pts=worst,
             pilot_share=max(shares))
    return m


def table(names: list[str], seeds: int) -> str:
    """The per-setting table of BENCHMARKS.md: test accuracy mean ± std (points) and the recipes chosen."""
    lines = ["| setting | teacher | plain, API defaults | **distilled, API defaults** | difference | careful plain | "
             "pilot chose | pilot share |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        rows = [json.loads((OUT / f"{name}-{s}.json").read_text()) for s in range(seeds)]
        form = "{:.3f} ± {:.3f} bpb" if rows[0].get("unit") == "bits per byte" else "{:.1f} ± {:.1f}"
        cell = lambda arm: form.format(*mean_std([r[arm] for r in rows]))  # noqa: E731
        d, sd = mean_std([gap(r) for r in rows])
        verdict = "win" if d > 2 * sd else "never worse" if d >= -2 * sd else "**worse**"
        chose = ", ".join(f"{k} ×{v}" for k, v in Counter(r["recipe"] for r in rows).items())
        lines.append(f"| `{name}` | {cell('teacher')} | {cell('plain_default')} | **{cell('distilled_default')}** | "
                     f"{d:+.1f} ± {sd:.1f} ({verdict}) | {cell('plain_careful')} | {chose} | "
                     f"{max(r['pilot_share'] for r in rows):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
