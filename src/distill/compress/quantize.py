"""int8 quantization of a trained model for CPU inference: dynamic, static (calibrated) and QAT.

    int8 = quantize_static_int8(student, data.train, backend="x86")     # conv + linear, calibrated
    int8 = quantize_dynamic_int8(mlp_or_transformer)                    # Linear layers only
    qat = prepare_qat(student, example, "x86")                          # fake-quant, trainable
    fit(qat, data.train, objective=KD(), teacher=LiveTeacher(teacher), ...)  # distillation-aware QAT
    int8 = convert_qat(qat)

Built on PyTorch's own int8 CPU kernels (fbgemm / oneDNN behind the `x86` engine, qnnpack on ARM):
`torch.ao.quantization` FX graph mode for static and QAT (it fuses conv-BN-ReLU and inserts the
quantize/dequantize steps itself) and eager `quantize_dynamic` for Linear layers. PyTorch marks
these APIs deprecated in favour of torchao, but on this CPU build torchao's paths are not faster:
PT2E + X86InductorQuantizer needs `torch.compile` (about 2 minutes here) and ran slower than
compiled fp32, and torchao's eager int8 weight-only Linear was slower than fp32. So we stay on
the kernels torch still ships and silence its deprecation notices. Those notices are real: torch
2.13 also warns that quantized tensors (`torch.qint8`) will be removed in a future release, so
this module is the one place to move to torchao once its CPU kernels are faster here.

The quantized engine is process-wide state in PyTorch: each function here selects `backend`
(`torch.backends.quantized.engine`) before packing the int8 weights; a converted model then runs
the kernels its weights were packed for.

Language models: dynamic int8 also quantizes activations, per tensor, on the fly. On SmolLM2-135M
(KJV text, 8×128 tokens) that took perplexity from 36.5 to 154 with every Linear quantized and to
127 with only the MLP ones (their inputs carry large outliers), but only to 38.9 with only the
attention projections: `quantize_dynamic_int8(lm, modules=[n for n in names if ".self_attn." in n])`.
Weight-only int8/int4 (what LLMs want) is not offered: torch has no such CPU Linear kernel, and
torchao's is slower than fp32 in eager mode on this CPU.
"""

from __future__ import annotations

import copy
import io
import pickle
import statistics
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.ao.quantization import quantize_fx
from torch.utils.data import Dataset

from distill.core.errors import CheckpointError, ConfigError, ModelError
from distill.core.files import atomic_write_bytes
from distill.data.arrays import ArrayDataset
from distill.data.batches import iter_batches
from distill.eval.bench import time_calls

_DEPRECATION = "torch.ao.quantization is deprecated"


def available_backends() -> list[str]:
    """Quantized engines this PyTorch build can run on this CPU (`none` excluded)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def check_backend(name: str) -> str:
    """Return `name` if it is a quantized engine available here, else raise a ConfigError that
    names it, the available ones and what to do."""
    available = available_backends()
    if name not in available:
        hint = (f"Choose one of {available} (x86 or fbgemm on Intel/AMD CPUs, qnnpack on ARM)."
                if available else "This PyTorch build has no int8 engine; install the official CPU "
                "build of torch (x86-64 or aarch64), or skip quantization.")
        raise ConfigError(f"Quantization backend `{name}` is not available on this machine "
                          f"(torch.backends.quantized.supported_engines = {available}). {hint} "
                          "Set it with backend=... or `distill quantize --backend NAME`.")
    return name


def use_backend(name: str) -> None:
    """Check `name` and make it the process's quantized engine (packing and kernels use it)."""
    torch.backends.quantized.engine = check_backend(name)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION)
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        yield


def quantize_dynamic_int8(model: nn.Module, *, modules: list[str] | None = None,
                          backend: str = "x86") -> nn.Module:
    """A copy of `model` whose `nn.Linear` layers hold int8 weights (one scale per output channel)
    and quantize their inputs on the fly, per batch: no calibration; suits MLPs and transformers
    (Hugging Face ones included). Convolutions stay fp32; the input model is left unchanged.

    Args:
        model: trained fp32 model.
        modules: module paths of the Linear layers to quantize; None: every Linear.
        backend: quantized engine (`check_backend`).
    """
    use_backend(backend)
    # per-channel weight scales: with per-tensor ones SmolLM2-135M reached perplexity 207, not 154
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec = {nn.Linear: qconfig} if modules is None else {name: qconfig for name in modules}
    with _quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec,
                                                      dtype=torch.qint8)


@torch.no_grad()
def quantize_static_int8(model: nn.Module, calibration: Dataset, *, batches: int = 8,
                         batch_size: int = 128, backend: str = "x86") -> nn.Module:
    """Post-training static int8: conv and linear weights and activations in int8.

    Conv-BN-ReLU are fused, observers record activation ranges on `batches` batches of
    `calibration` (real examples, a fixed random sample), then the model is converted.

    Args:
        model: trained fp32 model, traceable by torch.fx (the zoo's mlp, cnn and resnet are).
        calibration: dataset of `{"inputs": ...}` examples, e.g. the training split.
        batches: calibration batches; a few hundred examples fix the ranges of small models.
        batch_size: examples per calibration batch.
        backend: quantized engine (`check_backend`).
    """
    use_backend(backend)
    total = len(calibration)  # type: ignore[arg-type]
    sample = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:batches * batch_size]
    loader = list(iter_batches(calibration, sample, batch_size))
    with _quiet():
        qconfig = torch.ao.quantization.get_default_qconfig_mapping(backend)
        prepared = _trace(quantize_fx.prepare_fx, copy.deepcopy(model).cpu().eval(),
                          qconfig, loader[0]["inputs"])
        for batch in loader:
            prepared(batch["inputs"])
        return quantize_fx.convert_fx(prepared)


def prepare_qat(model: nn.Module, example: torch.Tensor, backend: str = "x86") -> nn.Module:
    """A copy of `model`, fused and with fake-quantization on weights and activations, in train
    mode: train it with `distill.training.classify.fit` (e.g. KD from a LiveTeacher), then `convert_qat`.

    Args:
        model: trained fp32 model (QAT fine-tunes; starting from scratch works but needs more epochs).
        example: one input batch (B, ...), used to trace the model.
        backend: quantized engine (`check_backend`).
    """
    use_backend(backend)
    with _quiet():
        qconfig = torch.ao.quantization.get_default_qat_qconfig_mapping(backend)
        return _trace(quantize_fx.prepare_qat_fx, copy.deepcopy(model).cpu().train(),
                      qconfig, example.cpu())


def qat_with_teacher(model: nn.Module, teacher: nn.Module, data: Dataset, *, num_classes: int, objective: Any,
                     epochs: int, lr: float, batch_size: int = 128, backend: str = "x86", seed: int = 0,
                     quiet: bool = True) -> nn.Module:
    """Distillation-aware QAT, start to finish: fake-quantize a copy of the trained fp32 `model`,
    fine-tune it for `epochs` with `objective` (e.g. KD) against the live `teacher` at learning rate
    `lr` on the CPU, and return the converted int8 model. `model` and `teacher` are not changed."""
    from distill.teachers.signals import LiveTeacher
    from distill.training.classify import fit
    from distill.training.config import TrainConfig

    example = next(iter_batches(data, torch.arange(min(8, len(data))), 8))["inputs"]  # type: ignore[arg-type]
    fake = prepare_qat(model, example, backend)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer={"name": "adamw", "lr": lr}, seed=seed)
    trained = fit(fake, data, objective=objective, config=config, num_classes=num_classes,
                  teacher=LiveTeacher(copy.deepcopy(teacher).cpu()), device="cpu", quiet=quiet, name="qat").model
    return convert_qat(trained)


def freeze_qat(model: nn.Module) -> nn.Module:
    """Stop updating activation ranges and BatchNorm statistics (usual for the last QAT epochs)."""
    model.apply(torch.ao.quantization.disable_observer)
    model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """The int8 model of a QAT-trained `prepare_qat` model (a converted copy; the input is kept)."""
    with _quiet():
        return quantize_fx.convert_fx(copy.deepcopy(model).cpu().eval())


def _trace(prepare: Callable[..., nn.Module], model: nn.Module, qconfig: Any,
           example: torch.Tensor) -> nn.Module:
    """`prepare(model, qconfig, (example,))`, with a torch.fx tracing failure told as a ModelError."""
    try:
        return prepare(model, qconfig, (example,))
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError) as exc:
        raise ModelError(f"`{type(model).__name__}` cannot be traced by torch.fx for static or QAT "
                         f"quantization ({exc}). Use method=dynamic (Linear layers only), or keep the "
                         "model's forward free of data-dependent Python control flow.") from None


def int8_layers(model: nn.Module) -> dict[str, str]:
    """Module path → type name of every layer that runs an int8 kernel (weights stored in int8)."""
    # quantized modules expose `weight()` (a method returning the unpacked qint8 tensor), float
    # modules a `weight` Parameter
    return {name: type(m).__name__ for name, m in model.named_modules()
            if callable(getattr(m, "weight", None)) and m.weight().dtype == torch.qint8}


@torch.no_grad()
def serialized_size_mb(model: nn.Module) -> float:
    """Bytes of the model's state dict as `torch.save` writes it (packed int8 weights included), in MB.

    safetensors cannot hold quantized tensors, so fp32 and int8 models are both measured this way.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def save_int8(model: nn.Module, path: Path) -> None:
    """Write a quantized model's state dict atomically (rebuild it with `load_int8`).

    safetensors cannot hold packed int8 weights, so this is `torch.save`'s format, which `load_int8`
    reads back with `weights_only=True`: tensors and plain containers only, never arbitrary objects.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_int8(model: nn.Module, path: Path, *, method: str, example: torch.Tensor,
              backend: str = "x86") -> nn.Module:
    """Rebuild the int8 model that `save_int8` wrote from the same fp32 architecture (`model`, any
    weights): quantize its structure the same way (`method`: dynamic, static or qat), then load the
    saved int8 state."""
    if method not in ("dynamic", "static", "qat"):
        raise ConfigError(f"load_int8: method {method!r} is not one of dynamic, static, qat.")
    state = _read_int8(Path(path))
    if method == "dynamic":
        shell = quantize_dynamic_int8(model, backend=backend)
    else:  # static and QAT convert to the same modules; the saved state replaces these ranges
        shell = quantize_static_int8(model, ArrayDataset(example.cpu(), torch.zeros(len(example))),
                                     batches=1, backend=backend)
    try:
        with _quiet():
            shell.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit this model quantized with method={method} ({exc}). Pass "
                              "the fp32 architecture and method it was saved from.") from None
    return shell


def _read_int8(path: Path) -> dict[str, Any]:
    """The state dict `save_int8` wrote; anything else is refused without being run."""
    if not path.is_file():
        raise CheckpointError(f"int8 checkpoint {path} does not exist.")
    try:
        with _quiet():
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run whatever the file holds
        raise CheckpointError(
            f"{path} is not a distill int8 checkpoint: it holds objects that torch.load(weights_only=True) "
            "refuses (anything but tensors and plain containers), and loading those could run code, so "
            "distill never does. Re-create it with `distill quantize ... --out` from weights you trust.") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a distill int8 checkpoint ({type(exc).__name__}); it may be "
                              "truncated or another format. Re-create it with `distill quantize ... --out`.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a distill int8 checkpoint: it holds a {type(state).__name__}, "
                              "not a state dict. Re-create it with `distill quantize ... --out`.")
    return state


def measure_cpu(models: dict[str, nn.Module], input_shape: tuple[int, ...], *, threads: int = 1,
                batch: int = 256, repeats: int = 50, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Size, latency at batch 1 (p50/p95, ms) and throughput at `batch` (examples/s) of fp32 and
    quantized models alike, timed side by side in interleaved rounds (as `distill.eval.bench`, whose
    `measure_models` needs parameters that quantized models no longer have)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one, many = torch.randn(1, *input_shape), torch.randn(batch, *input_shape)
        lat: dict[str, list[float]] = {k: [] for k in models}
        thr: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                lat[k] += time_calls(m.eval(), one, repeats=max(4, repeats // rounds), warmup=2)
                thr[k] += time_calls(m, many, repeats=max(1, repeats // (10 * rounds)), warmup=1)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for k, m in models.items():
        ts = sorted(lat[k])
        out[k] = {"size_mb": serialized_size_mb(m), "latency_b1_p50_ms": 1e3 * statistics.median(ts),
                  "latency_b1_p95_ms": 1e3 * ts[min(len(ts) - 1, int(0.95 * len(ts)))],
                  "throughput": batch / statistics.median(thr[k]),
                  "int8_layers": float(len(int8_layers(m)))}
    return out
