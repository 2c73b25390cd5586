"""Where do the API defaults leave accuracy on the table? A setting of `defaults_robustness.py`, its
student trained at the plain default's final budget five ways:

    plain         `distill.train` with its defaults (the budget it ends at: S steps)
    soft_targets  `distill.distill(..., loss=KD(2, 0.5), steps=S)`: the recipe the pilot chose there
    plain_aug     `distill.train(..., steps=S, augment={shift, mixup 0.2})`: augmentation, no teacher
    fm_mix1       function matching (KD T = 1 on the live teacher) with shifts and mixup Beta(1, 1)
    fm_mix02      the same with mixup Beta(0.2, 0.2)

The shift is the one `auto` scales to the input (`recipe.plan.shift_for`). Test accuracy per seed;
the teacher is the setting's own (trained once, seed 0). Each (setting, seed) runs in its own
process and is saved to benchmarks/work/augment_probe/<setting>-<seed>.json (resumable).

    .venv/bin/python benchmarks/augment_probe.py --settings letters32_full --seeds 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from common import WORK, mean_std, write_result

OUT = WORK / "augment_probe"
ARMS = ("plain", "soft_targets", "plain_aug", "fm_mix1", "fm_mix02")


def run_seed(name: str, seed: int) -> None:
    import defaults_robustness as dr

    import distill
    from distill.losses.methods import KD
    from distill.recipes.classify.plan import shift_for

    torch.set_num_threads(1)
    s = dr.SETTINGS[name]
    data = s.data()
    teacher = s.wrap(dr.teacher_of(name, data))

    def student():
        torch.manual_seed(1000 + seed)
        return s.student()

    row = {"teacher": dr.accuracy(teacher, data)[0]}
    plain = distill.train(student(), data.train, val_data=data.val, quiet=True, seed=seed)
    steps = plain.history[-1]["step"]
    row["plain"], row["steps"] = dr.accuracy(plain.model, data)[0], steps
    shift = shift_for(tuple(data.train[0]["inputs"].shape))
    row["shift"] = shift
    common = {"val_data": data.val, "quiet": True, "seed": seed, "steps": steps}
    row["soft_targets"] = dr.accuracy(distill.distill(teacher, student(), data.train, pilot_share=0,
                                                      loss=KD(2.0, 0.5), **common).model, data)[0]
    row["plain_aug"] = dr.accuracy(distill.train(student(), data.train, augment={"shift": shift, "mixup": 0.2},
                                                 **common).model, data)[0]
    for arm, mix in (("fm_mix1", 1.0), ("fm_mix02", 0.2)):
        row[arm] = dr.accuracy(distill.distill(teacher, student(), data.train, pilot_share=0, loss=KD(1.0, 1.0),
                                               signal="live", augment={"shift": shift, "mixup": mix},
                                               **common).model, data)[0]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{seed}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["letters32_full"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("SETTING", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return run_seed(args.one[0], int(args.one[1]))
    metrics: dict[str, float] = {}
    for name in args.settings:
        rows = []
        for seed in range(args.seeds):
            path = OUT / f"{name}-{seed}.json"
            if not path.is_file():
                subprocess.run([sys.executable, __file__, "--one", name, str(seed)], check=True)
            rows.append(json.loads(path.read_text()))
        for arm in ("teacher", *ARMS):
            metrics[f"{name}_{arm}_mean"], metrics[f"{name}_{arm}_std"] = mean_std([r[arm] for r in rows])
        metrics[f"{name}_steps"], metrics[f"{name}_shift"] = rows[0]["steps"], rows[0]["shift"]
    metrics["seeds"] = args.seeds
    write_result("augment_probe", metrics)


if __name__ == "__main__":
    main()
