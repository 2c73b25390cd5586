"""Does the verdict refuse noise? A/A pairs (one recipe, two seeds: no true difference) and A/B pairs with a
real gap, judged by the paired test the reports use (`distill.eval.verdict.compare_classifiers`).

    python benchmarks/verdict_calibration.py                 # 2 datasets × 24 A/A and 12 A/B pairs (resumable)

Datasets: scikit-learn's 8×8 digits (500 test examples) and the letters32 renders (1,040 test examples)
of `robustness_data.py`. A/A: the same student and recipe (plain training, API defaults) with seeds 2i
and 2i + 1; a false win is a *beats* either way. A/B: the same student at a quarter of the budget (A)
against the full budget (B), which is better by several points: the share where B *beats* A is the
power. Every trained model's per-example correctness is kept under `benchmarks/work/verdict_calibration/`,
so a rerun only trains what is missing.

Keys: `aa_pairs`, `false_win_rate` (the share of A/A verdicts saying B *beats* A; target ≤ 0.05),
`false_claim_rate` (*beats* or *worse*: any claim), `false_win_rate_examples_only` (the same with the
paired test over test examples alone, without the allowance for seed-to-seed variance), `ab_pairs`, `power`, `ab_gap_pts_mean` (the mean real
gap), per dataset `<data>_false_win_rate` / `<data>_power`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import robustness_data as rd  # noqa: E402
from common import WORK, write_result  # noqa: E402

import distill  # noqa: E402
from distill.eval.metrics import predict  # noqa: E402
from distill.eval.verdict import compare_classifiers  # noqa: E402

OUT = WORK / "verdict_calibration"
DATASETS = {
    "digits8": (lambda: rd.split(*rd.digits8(), 1000, 297), lambda: rd.mlp(64, [32], 10)),
    "letters32": (lambda: rd.split(*_letters(), 2600, 780), lambda: rd.mlp(1024, [64], 26)),
}


def _letters() -> tuple[torch.Tensor, torch.Tensor]:
    path = WORK / "defaults_robustness" / "data" / "letters32.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rd.letters32(), path)
    return torch.load(path)


def correct(name: str, seed: int, budget: float) -> list[bool]:
    """Per test example, whether a student trained with `seed` at `budget` × the default steps is right."""
    path = OUT / f"{name}-{seed}-{budget:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    make_data, make_student = DATASETS[name]
    data = make_data()
    torch.manual_seed(seed)
    default = distill.TrainConfig().total_steps(-(-len(data.train) // 128))
    model = distill.train(make_student(), data.train, val_data=data.val, quiet=True, seed=seed,
                          steps=max(1, int(budget * default))).model
    out = (predict(model, data.test).argmax(-1) == data.test.labels).tolist()
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aa", type=int, default=24, help="A/A pairs per dataset")
    p.add_argument("--ab", type=int, default=12, help="A/B pairs per dataset")
    args = p.parse_args()
    torch.set_num_threads(1)
    m: dict[str, float] = {}
    aa_wins = aa_claims = aa_naive = aa_n = ab_wins = ab_n = 0
    gaps = []
    for name in DATASETS:
        wins = claims = naive = 0
        for i in range(args.aa):
            a, b = (torch.tensor(correct(name, s, 1.0)) for s in (2 * i, 2 * i + 1))
            outcome = compare_classifiers(a, b).outcome
            wins += outcome == "beats"
            claims += outcome != "no detectable difference"  # "worse" is as false as "beats" here
            naive += compare_classifiers(a, b, seed_variance=False).outcome == "beats"
        found = 0
        for i in range(args.ab):
            a = torch.tensor(correct(name, 1000 + i, 0.25))
            b = torch.tensor(correct(name, 1000 + i, 1.0))
            v = compare_classifiers(a, b)
            found += v.outcome == "beats"
            gaps.append(v.difference)
        m[f"{name}_false_win_rate"], m[f"{name}_power"] = wins / args.aa, found / args.ab
        m[f"{name}_false_claim_rate"] = claims / args.aa
        m[f"{name}_false_win_rate_examples_only"] = naive / args.aa
        aa_naive += naive
        aa_wins, aa_n, ab_wins, ab_n = aa_wins + wins, aa_n + args.aa, ab_wins + found, ab_n + args.ab
        aa_claims += claims
        print(name, m[f"{name}_false_win_rate"], m[f"{name}_power"], flush=True)
    m.update(aa_pairs=aa_n, false_win_rate=aa_wins / aa_n, false_claim_rate=aa_claims / aa_n,
             false_win_rate_examples_only=aa_naive / aa_n, ab_pairs=ab_n, power=ab_wins / ab_n,
             ab_gap_pts_mean=sum(gaps) / len(gaps))
    write_result("verdict_calibration", m, {"datasets": {"digits8": "scikit-learn 8×8 digits, 500 test examples, "
                                                                     "MLP 64-32", "letters32": "letters32 renders, "
                                                                     "1,040 test examples, MLP 1024-64"}})


if __name__ == "__main__":
    main()
