"""Several teachers on Fashion-MNIST: does a student learn more from an ensemble than from one?

Run: .venv/bin/python benchmarks/multi_teacher.py   (≈ 20 min of CPU on 1 thread; teachers reused)
Needs Fashion-MNIST: bash scripts/get-fashion-mnist.sh

Three different teachers (CNN, ResNet-8, MLP) are trained once on 12,000 training images and
kept under benchmarks/work/multi_teacher/. Then, per seed, one small CNN student is trained for
the same epochs by
  plain        labels only (for scale)
  best_single  KD from the teacher with the best validation accuracy
  ensemble     KD from the `mean` ensemble of the three (normalised geometric mean)
  confidence   KD from the `confidence` ensemble (per-example, surer teachers count more)
KD: T = 4, α = 0.9, the teacher run live on each batch. Test: the official 10,000 images.
Writes benchmarks/results/multi_teacher.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import WORK, mean_std, write_result
from torch import nn

from distill.checkpoint import load_weights, save_weights
from distill.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
from distill.data import DataSplits, labels_of, load_data
from distill.ensemble import Ensemble
from distill.evaluate import predict
from distill.losses import CE, KD
from distill.models import build_model
from distill.signals import LiveTeacher
from distill.training import fit

OUT = WORK / "multi_teacher"
TEACHERS = {
    "cnn": ModelConfig(arch="cnn", kwargs={"widths": [32, 64], "convs": 1, "fc": 256,
                                           "dropout": 0.25}),
    "resnet8": ModelConfig(arch="resnet", kwargs={"depth": 8, "width": 16}),
    "mlp": ModelConfig(arch="mlp", kwargs={"hidden": [512, 512], "dropout": 0.2}),
}
STUDENT = ModelConfig(arch="cnn", kwargs={"widths": [8, 16], "fc": 32})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=12000, help="training images")
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)  # other benchmarks run beside this one
    start = time.perf_counter()
    data = load_data(DataConfig(name="fashion_mnist", limit=args.limit))
    teachers = {name: teacher(name, spec, data, args.teacher_epochs, args.limit)
                for name, spec in TEACHERS.items()}
    val = {name: accuracy(m, data.val) for name, m in teachers.items()}
    best = max(val, key=val.get)
    mean_ens = Ensemble(list(teachers.values()), "mean", names=list(teachers))
    conf_ens = Ensemble(list(teachers.values()), "confidence", names=list(teachers))
    print(f"validation accuracy: {val}; best single teacher: {best}", flush=True)
    teach = {"best_single": teachers[best], "ensemble": mean_ens, "confidence": conf_ens}
    per_seed: dict[str, list[float]] = {arm: [] for arm in ("plain", *teach)}
    for seed in args.seeds:
        for arm in per_seed:
            acc = student(arm, teach.get(arm), data, seed, args.student_epochs)
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
             "setup": {"train_images": len(data.train), "teacher_epochs": args.teacher_epochs,
                       "student_epochs": args.student_epochs,
                       "kd": {"temperature": 4.0, "alpha": 0.9},
                       "teachers": {n: s.model_dump(mode="json") for n, s in TEACHERS.items()},
                       "student": STUDENT.model_dump(mode="json"), "threads": 1}}
    write_result("multi_teacher", metrics, extra)


def teacher(name: str, spec: ModelConfig, data: DataSplits, epochs: int, limit: int) -> nn.Module:
    """Train a teacher once (resumable) and keep its best weights; later runs load them."""
    done = OUT / "teachers" / f"{name}-n{limit}-e{epochs}.safetensors"
    model = build_model(spec, data.input_shape, data.num_classes, seed=0)
    if done.is_file():
        load_weights(done, model)
        return model.eval()
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=128, precision="no",
                      optimizer=OptimizerConfig(name="adamw", lr=2e-3, weight_decay=5e-4))
    result = fit(model, data.train, objective=CE(), config=cfg, num_classes=data.num_classes,
                 val_data=data.val, checkpoint_dir=OUT / "runs" / done.stem, resume=True,
                 device="cpu", quiet=True, name=name)
    save_weights(done, result.model, {"best_epoch": result.best_epoch})
    print(f"teacher {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result.model.eval()


def student(arm: str, teacher_model: nn.Module | None, data: DataSplits, seed: int,
            epochs: int) -> float:
    """Test accuracy (%) of the small CNN student trained by one arm; finished arms are reused."""
    done = OUT / "students" / f"{arm}-seed{seed}-e{epochs}-n{len(data.train)}.json"
    if done.is_file():
        return json.loads(done.read_text())["test_acc"]
    model = build_model(STUDENT, data.input_shape, data.num_classes, seed=seed)
    cfg = TrainConfig(epochs=epochs, batch_size=128, precision="no", seed=seed,
                      optimizer=OptimizerConfig(name="adamw", lr=2e-3))
    signal = LiveTeacher(teacher_model) if teacher_model is not None else None
    objective = KD(temperature=4.0, alpha=0.9) if signal is not None else CE()
    result = fit(model, data.train, objective=objective, config=cfg, num_classes=data.num_classes,
                 teacher=signal, val_data=data.val, device="cpu", quiet=True, name=f"{arm}-{seed}")
    acc = accuracy(result.model, data.test)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"test_acc": acc, "best_epoch": result.best_epoch}))
    return acc


def accuracy(model: nn.Module, dataset) -> float:
    logits = predict(model, dataset)
    return 100 * float((logits.argmax(-1) == labels_of(dataset)).float().mean())


if __name__ == "__main__":
    main()
