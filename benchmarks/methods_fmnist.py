"""Method table on one fixed Fashion-MNIST pair: CNN teacher -> small CNN student, 3 seeds per method.

Run: .venv/bin/python benchmarks/methods_fmnist.py        (~10 min on an idle 2-core CPU; resumable)
     .venv/bin/python benchmarks/methods_fmnist.py --transfer    (~40 min): the transfer-set table
Needs Fashion-MNIST: bash scripts/get-fashion-mnist.sh

--transfer: labels on 10,000 of the 54,000 training images (a stratified share), the other 44,000
as unlabelled inputs the teacher scores (`data.label_fraction`). Every teacher-reading method trains
on labelled ∪ unlabelled (its teacher terms on every image, CE on the labelled ones); `plain` trains
on the labelled images alone for as many optimizer steps (5.4× the epochs), `plain_short` for the
same epochs. Written to benchmarks/results/methods_fmnist_transfer.json.

Teacher: the Fashion-MNIST benchmark's CNN (benchmarks/fmnist_kd.py trains it once, ~20 min).
Student: CNN widths 8/16, FC 32, trained on a fixed 10,000-image subset for the same epochs with
every method; the teacher runs live (feature methods read its layers). Each method is a `losses`
list, exactly what a run config would declare. Each (method, seed) is saved to
benchmarks/work/methods_fmnist/<method>-<seed>.json, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import WORK, mean_std, write_result
from fmnist_kd import CONFIG
from fmnist_kd import teacher as teacher_weights

from distill.core.checkpoint import load_weights
from distill.data.arrays import labels_of
from distill.data.datasets import load_data
from distill.data.transfer import with_transfer_set
from distill.eval.metrics import classification_metrics, predict
from distill.losses.methods import Method
from distill.models.config import ModelConfig
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.config import load_config
from distill.teachers.signals import LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

OUT = WORK / "methods_fmnist"
STUDENT = ModelConfig(arch="cnn", kwargs={"widths": [8, 16], "convs": 1, "fc": 32})
KD = [{"kind": "kd", "weight": 0.9, "temperature": 4.0}, {"kind": "ce", "weight": 0.1}]
HINT = {"kind": "hint", "student": "features.2", "teacher": "features.2", "weight": 1.0}  # stage-2 maps, 14×14
METHODS: dict[str, list[dict]] = {
    "plain": [{"kind": "ce"}],
    "kd": KD,
    "fitnets": [{"kind": "ce"}, HINT],
    "at": [{"kind": "ce"}, {"kind": "attention_transfer", "student": "features.2", "teacher": "features.2",
                            "weight": 1000.0}],
    "rkd": [{"kind": "ce"}, {"kind": "rkd", "student": "head.2", "teacher": "head.2", "weight": 1.0}],
    "dkd": [{"kind": "ce"}, {"kind": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0}],
    # DKD's published schedule: its weight ramps from 0 over the first 20 of 240 epochs, then holds
    "dkd_warmup": [{"kind": "ce"}, {"kind": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                                    "weight": {"start": 0.0, "end": 1.0, "until": 20 / 240}}],
    "crd": [{"kind": "ce"}, {"kind": "contrastive", "student": "head.2", "teacher": "head.2", "weight": 0.8,
                             "temperature": 0.1}],
    "kd_feature": [*KD, HINT],
    # KD's weight against the labels (α): 0.9 above, as in configs/fashion_mnist.yaml; lower here
    "kd_a05": [{"kind": "kd", "weight": 0.5, "temperature": 4.0}, {"kind": "ce", "weight": 0.5}],
    "kd_a01": [{"kind": "kd", "weight": 0.1, "temperature": 4.0}, {"kind": "ce", "weight": 0.9}],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--limit", type=int, default=10_000)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--transfer", action="store_true", help="labels on 10,000 images, 44,000 unlabelled")
    args = p.parse_args()
    if args.transfer:
        return transfer_table(args)
    cfg = load_config(CONFIG, [f"data.limit={args.limit}"])
    data = load_data(cfg.data)
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes)
    load_weights(teacher_weights(), teacher)
    teacher = freeze(teacher)
    t_logits = predict(teacher, data.test)
    teacher_acc = 100 * classification_metrics(t_logits, labels_of(data.test))["accuracy"]
    rows = {m: [_run(m, seed, data, teacher, t_logits, args.epochs) for seed in range(args.seeds)]
            for m in args.methods}
    write_result("methods_fmnist", _metrics(rows, teacher_acc),
                 {"per_seed": rows, "epochs": args.epochs, "train_images": len(data.train), "methods": METHODS})


def transfer_table(args) -> None:
    """The method table with a transfer set: 10,000 labelled images and 44,000 unlabelled ones."""
    cfg = load_config(CONFIG, [f"data.label_fraction={args.limit / 54_000:.6f}"])
    data = load_data(cfg.data)
    teacher = freeze(build_model(cfg.teacher, data.input_shape, data.num_classes))
    load_weights(teacher_weights(), teacher)
    t_logits = predict(teacher, data.test)
    teacher_acc = 100 * classification_metrics(t_logits, labels_of(data.test))["accuracy"]
    union = with_transfer_set(data.train, data.unlabeled)
    long = round(args.epochs * len(union) / len(data.train))  # plain: the same optimizer steps
    rows = {"plain": [_run("plain", s, data, teacher, t_logits, long, tag="t") for s in range(args.seeds)],
            "plain_short": [_run("plain", s, data, teacher, t_logits, args.epochs, tag="t") for s in range(args.seeds)]}
    for m in args.methods:
        if m != "plain":
            rows[m] = [_run(m, s, data, teacher, t_logits, args.epochs, train=union, tag="t") for s in range(args.seeds)]
    write_result("methods_fmnist_transfer", _metrics(rows, teacher_acc),
                 {"per_seed": rows, "epochs": args.epochs, "plain_epochs": long, "labelled": len(data.train),
                  "unlabelled": len(data.unlabeled), "methods": METHODS})


def _run(method: str, seed: int, data, teacher, t_logits, epochs: int, train=None, tag: str = "") -> dict[str, float]:
    train = data.train if train is None else train
    done = OUT / f"{method}-{tag}e{epochs}-n{len(train)}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.manual_seed(seed)
    student = build_model(STUDENT, data.input_shape, data.num_classes, seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=128, optimizer={"name": "adamw", "lr": 3e-3}, seed=seed)
    start = time.perf_counter()
    out = fit(student, train, objective=Method(METHODS[method]), config=config, num_classes=data.num_classes,
              teacher=LiveTeacher(teacher), val_data=data.val, quiet=True, name=method)
    seconds = time.perf_counter() - start
    m = classification_metrics(predict(out.model, data.test), labels_of(data.test), t_logits)
    row = {"acc": 100 * m["accuracy"], "agreement": 100 * m["agreement"], "epoch_s": seconds / epochs}
    OUT.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row))
    print(method, seed, row, flush=True)
    return row


def _metrics(rows: dict[str, list[dict]], teacher_acc: float) -> dict[str, float]:
    m: dict[str, float] = {"teacher_acc": teacher_acc}
    plains = [mean_std([r["acc"] for r in rows[k]])[0] for k in ("plain", "plain_short") if k in rows]
    plain = max(plains) if plains else float("nan")  # the better plain arm: a gain is the teacher's
    for method, runs in rows.items():
        mean, std = mean_std([r["acc"] for r in runs])
        m[f"{method}_acc_mean"], m[f"{method}_acc_std"] = mean, std
        m[f"{method}_gap_closed"] = (mean - plain) / (teacher_acc - plain)
        m[f"{method}_agreement_mean"] = mean_std([r["agreement"] for r in runs])[0]
        m[f"{method}_epoch_s"] = sorted(r["epoch_s"] for r in runs)[len(runs) // 2]
    return m


if __name__ == "__main__":
    main()
