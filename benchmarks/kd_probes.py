"""Single-seed probes behind the full-label Fashion-MNIST statements in BENCHMARKS.md (kd_wins
`fmnist_full`, fmnist_kd): other temperatures, weights, schedules and augmentations than the
default recipe, seed 0 only — a map of what was tried, not a 3-seed result.

Run from the repository root: .venv/bin/python benchmarks/kd_probes.py   (~25 min on 2 cores; resumable)
Needs the teachers of kd_wins.py (fmnist_full) and fmnist_kd.py. Each probe is `distill run
configs/fashion_mnist.yaml` with the overrides below; finished runs in benchmarks/work/probe/runs are
reused. Writes benchmarks/results/kd_probes.json: `<probe>_kd` (and `<probe>_plain` where the probe
trains the plain student too), test accuracy in %.
"""

from __future__ import annotations

from pathlib import Path

from common import run_report, write_result

CONFIG = Path("configs/fashion_mnist.yaml")
RUNS = "benchmarks/work/probe/runs"
# kd_wins fmnist_full's teacher and student: the 8/16 CNN, FC 32
CNN = [f"output_dir={RUNS}", "quiet=true", "teacher.cache_dir=benchmarks/work/kd_wins/cache",
       "teacher.checkpoint=benchmarks/work/kd_wins/fmnist_full/teacher/teacher/model.safetensors", "train.seed=0",
       "teacher.signal=auto", "kd.temperature=null", "kd.ratio=null", "student.arch=cnn",
       "student.kwargs={widths: [8, 16], convs: 1, fc: 32}", "bench.repeats=20"]
# fmnist_kd's teacher and student: the 784-256 MLP, cached teacher, clean images
MLP = [f"output_dir={RUNS}", "quiet=true", "teacher.checkpoint=benchmarks/work/fmnist/teacher/teacher/model.safetensors",
       "teacher.cache_dir=benchmarks/work/fmnist/cache", "student.kwargs={hidden: [256]}", "train.seed=0",
       "teacher.signal=cached", "train.augment.flip=false", "baseline=false", "bench.repeats=5"]
PROBES: dict[str, list[str]] = {
    "A_T2a05": [*CNN, "recipe=soft_targets", "baseline=true", "teacher.signal=cached"],  # the recipe at lr 1e-3
    "B_T4a09": [*CNN, "recipe=soft_targets", "baseline=false", "kd.temperature=4", "kd.ratio=0.9"],
    "C_T1a1": [*CNN, "recipe=soft_targets", "baseline=false", "kd.temperature=1", "kd.ratio=1.0"],
    "D_T4a1": [*CNN, "recipe=soft_targets", "baseline=false", "kd.temperature=4", "kd.ratio=1.0"],
    "E_lr3": [*CNN, "recipe=soft_targets", "baseline=true", "train.optimizer.lr=3e-3"],
    "G_T1a1_e40": [*CNN, "recipe=soft_targets", "baseline=true", "kd.temperature=1", "kd.ratio=1.0",
                   "train.epochs=40"],
    "F_fm_nomix": [*CNN, "recipe=function_matching", "baseline=false", "train.augment={shift: 1, flip: true, mixup: 0.0}"],
    "mlp256_t4a09": [*MLP, "kd.temperature=4", "kd.ratio=0.9"],
    "mlp256_t1a1": [*MLP, "kd.temperature=1", "kd.ratio=1.0"],
    "mlp256_t8a09": [*MLP, "kd.temperature=8", "kd.ratio=0.9"],
}


def main() -> None:
    metrics: dict[str, float] = {}
    for name, overrides in PROBES.items():
        models = run_report(CONFIG, [*overrides, f"name={name}"])["models"]
        metrics[f"{name}_kd"] = 100 * models["distilled"]["accuracy"]
        if "baseline" in models:
            metrics[f"{name}_plain"] = 100 * models["baseline"]["accuracy"]
    write_result("kd_probes", metrics, {"probes": PROBES, "seed": 0})


if __name__ == "__main__":
    main()
