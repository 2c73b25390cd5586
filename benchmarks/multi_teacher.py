"""Several teachers on Fashion-MNIST: does a student learn more from an ensemble than from one?

Run: .venv/bin/python benchmarks/multi_teacher.py   (≈ 30 min on 2 CPU cores; teachers and seeds reused)
Needs Fashion-MNIST: bash scripts/get-fashion-mnist.sh

Labels on 20% of the training images (10,800, stratified: `data.label_fraction`), the other 43,200
unlabelled: the setting where a teacher has something to give (the transfer set). The teachers
(`--teachers`, from POOL; default: two CNNs of different seeds and a ResNet-8) are trained once on the
labelled images (shifts + flips) and kept under benchmarks/work/multi_teacher/. Then, per seed, one small CNN student is trained with the
same number of optimizer steps by
  plain        labels only, on the 10,800 labelled images (5× the epochs)
  best_single  KD from the teacher with the best validation accuracy, over labelled ∪ unlabelled
  ensemble     KD from the `mean` ensemble of the three (normalised geometric mean)
  confidence   KD from the `confidence` ensemble (per-example, surer teachers count more)
KD: the soft-targets recipe (`distill.recipes.classify.plan`: T = 2, α = 0.5; CE on the labelled rows only), the
teacher's logits cached once. Test: the official 10,000 images.
Writes benchmarks/results/multi_teacher.json (multi_teacher_<names>.json for another --teachers set).
"""

from __future__ import annotations

import argparse
import json
import math
import time

from common import WORK, mean_std, write_result
from torch import nn

from distill.core.checkpoint import load_weights, save_weights
from distill.data.arrays import DataSplits, labels_of
from distill.data.augment import AugmentConfig
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.data.transfer import with_transfer_set
from distill.eval.metrics import predict
from distill.losses.config import KDConfig
from distill.losses.methods import CE
from distill.models.config import ModelConfig
from distill.models.ensemble import Ensemble
from distill.models.zoo import build_model, freeze
from distill.recipes.classify.plan import kd_objective
from distill.teachers.signals import CachedTeacher
from distill.training.classify import fit
from distill.training.config import OptimizerConfig, TrainConfig

OUT = WORK / "multi_teacher"
CNN = ModelConfig(arch="cnn", kwargs={"widths": [32, 64], "convs": 1, "fc": 256, "dropout": 0.25})
POOL = {  # name: (architecture, seed of its initial weights and data order)
    "cnn": (CNN, 0),
    "cnn_seed1": (CNN, 1),
    "resnet8": (ModelConfig(arch="resnet", kwargs={"depth": 8, "width": 16}), 0),
    "mlp": (ModelConfig(arch="mlp", kwargs={"hidden": [512, 512], "dropout": 0.2}), 0),
}
DEFAULT_TEACHERS = ["cnn", "cnn_seed1", "resnet8"]
STUDENT = ModelConfig(arch="cnn", kwargs={"widths": [8, 16], "fc": 32})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--label-fraction", type=float, default=0.2, help="share of the training images labelled")
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--student-epochs", type=int, default=6, help="over labelled ∪ unlabelled")
    p.add_argument("--teachers", nargs="+", choices=list(POOL), default=DEFAULT_TEACHERS)
    args = p.parse_args()
    start = time.perf_counter()
    data = load_data(DataConfig(name="fashion_mnist", label_fraction=args.label_fraction))
    teachers = {name: teacher(name, *POOL[name], data, args.teacher_epochs) for name in args.teachers}
    val = {name: accuracy(m, data.val) for name, m in teachers.items()}
    best = max(val, key=val.get)
    mean_ens = Ensemble(list(teachers.values()), "mean", names=list(teachers))
    conf_ens = Ensemble(list(teachers.values()), "confidence", names=list(teachers))
    print(f"validation accuracy: {val}; best single teacher: {best}", flush=True)
    teach = {"best_single": teachers[best], "ensemble": mean_ens, "confidence": conf_ens}
    per_seed: dict[str, list[float]] = {arm: [] for arm in ("plain", *teach)}
    taught = with_transfer_set(data.train, data.unlabeled)
    signals = {arm: CachedTeacher.build_or_load(freeze(m), taught, OUT / "cache", quiet=True) for arm, m in teach.items()}
    for seed in args.seeds:
        for arm in per_seed:
            tag = arm if arm == "plain" else f"{arm}-{'+'.join(args.teachers)}"  # a student per teacher set
            acc = student(tag, signals.get(arm), data, taught, seed, args.student_epochs)
            per_seed[arm].append(acc)
            elapsed = time.perf_counter() - start
            print(f"seed {seed} {arm}: {acc:.2f}% ({elapsed:.0f} s)", flush=True)
    metrics: dict[str, float] = {}
    for arm, accs in per_seed.items():
        metrics[f"{arm}_acc_mean"], metrics[f"{arm}_acc_std"] = mean_std(accs)
    for name, m in teachers.items():
        metrics[f"teacher_{name}_acc"] = accuracy(m, data.test)
    metrics["ensemble_teacher_acc"] = accuracy(mean_ens, data.test)
    metrics["confidence_teacher_acc"] = accuracy(conf_ens, data.test)
    extra = {"per_seed": per_seed, "best_single_teacher": best,
             "teacher_val_acc": val, "seconds": round(time.perf_counter() - start),
             "cpu_seconds": round(time.process_time()),  # wall time depends on what runs beside it
             "setup": {"labelled_images": len(data.train), "unlabelled_images": len(data.unlabeled),
                       "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                       "kd": kd_objective(KDConfig()).describe(),
                       "teachers": {n: {**POOL[n][0].model_dump(mode="json"), "seed": POOL[n][1]}
                                    for n in args.teachers},
                       "student": STUDENT.model_dump(mode="json")}}
    other = args.teachers != DEFAULT_TEACHERS  # another teacher set: its own results file
    write_result("multi_teacher" + ("_" + "_".join(args.teachers) if other else ""), metrics, extra)


def teacher(name: str, spec: ModelConfig, seed: int, data: DataSplits, epochs: int) -> nn.Module:
    """Train a teacher once on the labelled images (resumable) and keep its best weights; later runs load them."""
    done = OUT / "teachers" / f"{name}-n{len(data.train)}-e{epochs}-aug.safetensors"
    model = build_model(spec, data.input_shape, data.num_classes, seed=seed)
    if done.is_file():
        load_weights(done, model)
        return model.eval()
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=128, precision="no", augment=AugmentConfig(shift=2, flip=True), seed=seed,
                      optimizer=OptimizerConfig(name="adamw", lr=2e-3, weight_decay=5e-4))
    result = fit(model, data.train, objective=CE(), config=cfg, num_classes=data.num_classes,
                 val_data=data.val, checkpoint_dir=OUT / "runs" / done.stem, resume=True,
                 device="cpu", quiet=True, name=name)
    save_weights(done, result.model, {"best_epoch": result.best_epoch})
    print(f"teacher {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result.model.eval()


def student(arm: str, signal: CachedTeacher | None, data: DataSplits, taught, seed: int, epochs: int) -> float:
    """Test accuracy (%) of the small CNN student trained by one arm; finished arms are reused. The
    plain arm sees the labelled images only, for as many steps as the others take over `taught`."""
    done = OUT / "students" / f"{arm}-seed{seed}-e{epochs}-n{len(taught)}.json"
    if done.is_file():
        return json.loads(done.read_text())["test_acc"]
    model = build_model(STUDENT, data.input_shape, data.num_classes, seed=seed)
    steps = epochs * math.ceil(len(taught) / 128)
    plain_epochs = math.ceil(steps / math.ceil(len(data.train) / 128))
    cfg = TrainConfig(epochs=epochs if signal is not None else plain_epochs, batch_size=128, precision="no",
                      seed=seed, optimizer=OptimizerConfig(name="adamw", lr=2e-3))
    result = fit(model, taught if signal is not None else data.train,
                 objective=kd_objective(KDConfig()) if signal is not None else CE(), config=cfg,
                 num_classes=data.num_classes, teacher=signal, val_data=data.val, device="cpu", quiet=True,
                 name=f"{arm}-{seed}")
    acc = accuracy(result.model, data.test)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"test_acc": acc, "best_epoch": result.best_epoch, "epochs": cfg.epochs}))
    return acc


def accuracy(model: nn.Module, dataset) -> float:
    logits = predict(model, dataset)
    return 100 * float((logits.argmax(-1) == labels_of(dataset)).float().mean())


if __name__ == "__main__":
    main()
