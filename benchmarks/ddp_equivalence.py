"""1 process vs 2 processes (torchrun, gloo, CPU) with the same global batch: the same training, to rounding.

Run: .venv/bin/python benchmarks/ddp_equivalence.py     (about 3 min on 2 busy CPU cores)

In 1 process (train.batch_size = 128) and in 2 processes (train.batch_size = 64 each), on mnist5k
(3,500 training images, 500 for validation), global batch 128:
  teacher  MLP [256], cross-entropy, 2 epochs (plain supervised training)
  kd       MLP [64], KD from the live teacher (replicated in every process), 3 epochs
  hint     MLP [64], FitNets hint (learned adapter) + KD + CE, 3 epochs
A third run, 1 process with another data order (seed 1), shows how far a real difference moves
the same numbers. Writes benchmarks/results/ddp_equivalence.json:
  max_metric_diff  largest |Δ| over every logged loss / val_nll, every epoch, every model
  max_weight_diff  largest |Δ| over every final weight
  tolerance        1e-5, the bound tests/test_distributed.py asserts (derivation there)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_result

TOLERANCE = 1e-5
GLOBAL_BATCH = 128
HINT = [{"kind": "hint", "student": "net.2", "teacher": "net.2"}, {"kind": "kd", "weight": 0.5},
        {"kind": "ce", "weight": 0.5}]


def worker(out: Path, epochs: int, seed: int) -> None:
    """One process of a run (under torchrun): train the three models, rank 0 writes what they ended as."""
    from distill.core.distributed import process_state
    from distill.data.config import DataConfig
    from distill.data.datasets import load_data
    from distill.losses.methods import CE, KD, Method
    from distill.models.config import ModelConfig
    from distill.models.zoo import build_model
    from distill.teachers.signals import LiveTeacher
    from distill.training.classify import fit
    from distill.training.config import TrainConfig

    torch.set_num_threads(1)
    state = process_state("cpu")
    data = load_data(DataConfig(name="mnist5k"))

    def config(n: int, s: int = 0) -> TrainConfig:
        return TrainConfig(epochs=n, batch_size=GLOBAL_BATCH // state.num_processes, precision="no",
                           optimizer={"lr": 3e-3}, seed=s)

    def train(hidden: int, objective, cfg: TrainConfig, teacher=None) -> tuple[torch.nn.Module, dict]:
        model = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [hidden]}), data.input_shape, 10, seed=0)
        start = time.perf_counter()
        r = fit(model, data.train, objective=objective, config=cfg, num_classes=10, teacher=teacher,
                val_data=data.val, quiet=True, device="cpu")
        return r.model, {"history": r.history, "seconds": time.perf_counter() - start}

    teacher, record_t = train(256, CE(), config(2))
    live = LiveTeacher(teacher)
    runs = {"teacher": (teacher, record_t), "kd": train(64, KD(), config(epochs, seed), live),
            "hint": train(64, Method(HINT), config(epochs, seed), live)}
    if state.is_main_process:
        from safetensors.torch import save_file

        save_file({f"{n}.{k}": v.contiguous() for n, (m, _) in runs.items() for k, v in m.state_dict().items()},
                  str(out / "weights.safetensors"))
        record = {"world": state.num_processes, "train": len(data.train), "val": len(data.val),
                  "runs": {n: rec for n, (_, rec) in runs.items()}}
        (out / "record.json").write_text(json.dumps(record))


def launch(world: int, out: Path, epochs: int, seed: int = 0) -> dict:
    """One run in `world` CPU processes; its record and final weights."""
    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={world}",
           __file__, "--worker", str(out), "--epochs", str(epochs), "--seed", str(seed)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = json.loads((out / "record.json").read_text())
    record["wall_seconds"] = time.perf_counter() - start
    record["weights"] = load_file(str(out / "weights.safetensors"))
    return record


def compare(a: dict, b: dict) -> dict[str, float]:
    """Largest differences between two runs: continuous metrics, accuracy, weights."""
    metric, accuracy = 0.0, 0.0
    for name, run in a["runs"].items():
        for ra, rb in zip(run["history"], b["runs"][name]["history"], strict=True):
            for k in ra:
                diff = abs(ra[k] - rb[k])
                if k == "val_accuracy":
                    accuracy = max(accuracy, diff)
                else:
                    metric = max(metric, diff)
    weight = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])
    return {"metric": metric, "accuracy": accuracy, "weight": weight}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.epochs, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(1, Path(tmp) / "one", args.epochs)
        two = launch(2, Path(tmp) / "two", args.epochs)
        other = launch(1, Path(tmp) / "other", args.epochs, seed=1)
    same, reordered = compare(two, one), compare(other, one)
    last = {n: r["history"][-1] for n, r in two["runs"].items()}
    write_result("ddp_equivalence", {
        "max_metric_diff": same["metric"], "max_weight_diff": same["weight"],
        "max_val_accuracy_diff": same["accuracy"], "tolerance": TOLERANCE,
        "accuracy_tolerance": 1 / one["val"],
        "reordered_metric_diff": reordered["metric"], "reordered_weight_diff": reordered["weight"],
        "kd_val_accuracy": last["kd"]["val_accuracy"], "hint_val_accuracy": last["hint"]["val_accuracy"],
        "teacher_val_accuracy": last["teacher"]["val_accuracy"],
        "wall_seconds_1proc": one["wall_seconds"], "wall_seconds_2proc": two["wall_seconds"],
    }, extra={"passed": same["metric"] <= TOLERANCE and same["weight"] <= TOLERANCE
              and same["accuracy"] <= 1 / one["val"] + 1e-9,
              "setting": {"data": "mnist5k", "train": one["train"], "val": one["val"],
                          "global_batch": GLOBAL_BATCH, "epochs": {"teacher": 2, "kd": args.epochs,
                                                                   "hint": args.epochs},
                          "backend": "gloo", "processes": [1, 2], "precision": "fp32"},
              "note": "wall times include process start-up and were taken on a shared, busy 2-core CPU"})


if __name__ == "__main__":
    main()
