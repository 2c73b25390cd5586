"""Prune + distil (the Minitron recipe) on Fashion-MNIST: structured pruning of the CNN teacher to
50% and 80% fewer parameters, then recovery by fine-tuning with labels only (`no_kd`) vs by distillation
from the unpruned model: the soft-targets recipe's KD (`kd`: T = 2, α = 0.5, what `recipe: auto` uses
with this teacher) and Minitron's logits-only KD (`kd_pure`: T = 1, α = 1). 3 seeds of recovery per
arm; latency of the pruned models measured side by side.

Run: .venv/bin/python benchmarks/prune.py        (~25 min on 2 CPU cores; resumable)
Needs Fashion-MNIST (bash scripts/get-fashion-mnist.sh) and the teacher of benchmarks/fmnist_kd.py.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import WORK, mean_std, write_result
from fmnist_kd import CONFIG
from fmnist_kd import teacher as teacher_weights

from distill.compress.prune import prune_to_size
from distill.core.checkpoint import load_weights
from distill.data.arrays import labels_of
from distill.data.datasets import load_data
from distill.eval.bench import time_calls
from distill.eval.metrics import classification_metrics, predict
from distill.losses.config import KDConfig
from distill.losses.methods import CE, KD
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.config import load_config
from distill.recipes.classify.plan import kd_objective
from distill.teachers.signals import LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

OUT = WORK / "prune"
LEVELS = (0.5, 0.8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=20_000)
    args = p.parse_args()
    cfg = load_config(CONFIG, [f"data.limit={args.limit}"])
    data = load_data(cfg.data)
    original = build_model(cfg.teacher, data.input_shape, data.num_classes)
    load_weights(teacher_weights(), original)
    original = freeze(original)
    labels = labels_of(data.test)
    t_logits = predict(original, data.test)
    m: dict[str, float] = {"teacher_acc": _acc(t_logits, labels)}
    extra: dict[str, dict] = {}
    example = data.train.inputs[:8]
    for level in LEVELS:
        tag = f"{round(level * 100)}"
        pruned, report = prune_to_size(original, level, example)
        m[f"reduction_{tag}"] = report.reduction
        m[f"acc_{tag}_pruned"] = _acc(predict(pruned, data.test), labels)
        arms = {"no_kd": CE(), "kd": kd_objective(KDConfig()), "kd_pure": KD(temperature=1.0, ratio=1.0)}
        for arm, objective in arms.items():
            accs = [_recover(tag, arm, seed, pruned, objective, original, data, args.epochs, labels)
                    for seed in range(args.seeds)]
            m[f"acc_{tag}_{arm}"], m[f"acc_{tag}_{arm}_std"] = mean_std(accs)
            extra.setdefault("per_seed", {})[f"{tag}_{arm}"] = accs
        m[f"speedup_{tag}"], m[f"throughput_ratio_{tag}"] = _speed(original, pruned)
        extra.setdefault("widths", {})[tag] = report.widths
    write_result("prune", m, {**extra, "epochs": args.epochs, "train_images": len(data.train)})


def _recover(tag: str, arm: str, seed: int, pruned, objective, original, data, epochs: int, labels) -> float:
    done = OUT / f"{tag}-{arm}-e{epochs}-n{len(data.train)}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())["acc"]
    import copy

    model = copy.deepcopy(pruned).train()
    for p in model.parameters():
        p.requires_grad_(True)
    config = TrainConfig(epochs=epochs, batch_size=128, optimizer={"name": "adamw", "lr": 1e-3}, seed=seed)
    out = fit(model, data.train, objective=objective, config=config, num_classes=data.num_classes,
              teacher=LiveTeacher(original) if objective.needs_teacher else None, val_data=data.val, quiet=True,
              name=f"{tag}-{arm}")
    acc = _acc(predict(out.model, data.test), labels)
    OUT.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"acc": acc}))
    print(tag, arm, seed, acc, flush=True)
    return acc


def _speed(original, pruned, rounds: int = 7) -> tuple[float, float]:
    """Batch-1 latency and batch-256 throughput ratios, timed in interleaved rounds on 1 thread."""
    torch.set_num_threads(1)
    one, many = torch.randn(1, 1, 28, 28), torch.randn(256, 1, 28, 28)
    lat = {"o": [], "p": []}
    thr = {"o": [], "p": []}
    for _ in range(rounds):
        for key, model in (("o", original), ("p", pruned)):
            lat[key].append(statistics.median(time_calls(model, one, repeats=50)))
            thr[key].append(statistics.median(time_calls(model, many, repeats=5)))
    med = {k: statistics.median(v) for k, v in lat.items()}
    tmed = {k: statistics.median(v) for k, v in thr.items()}
    return med["o"] / med["p"], tmed["o"] / tmed["p"]


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * classification_metrics(logits, labels)["accuracy"]


if __name__ == "__main__":
    main()
