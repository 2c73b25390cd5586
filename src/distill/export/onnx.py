"""ONNX exports with the input names other tools expect, their parity check, benchmark and int8.

    export_onnx(student, example, "student.onnx")              # atomic, dynamic batch/sequence axes
    report = check_parity(student, "student.onnx", data.test)  # ExportError past the tolerance
    costs = bench_onnx(student, "student.onnx", inputs)        # eager vs ONNX Runtime, 1 thread
    quantize_onnx("student.onnx", "student-int8.onnx")         # ONNX Runtime dynamic int8 weights
    write_metadata("student.onnx", {"class_names": '["cat", "dog"]'})  # ORT: custom_metadata_map

ONNX needs `pip install 'distill[export]'` (onnx, onnxruntime, onnxscript); they are imported
inside the functions that use them, so `import distill` stays cheap.
"""

from __future__ import annotations

import logging
import re
import statistics
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.core.errors import ExportError, ModelError
from distill.core.files import atomic_write_bytes
from distill.data.batches import iter_batches
from distill.eval.bench import time_calls
from distill.models.zoo import logits_of

INT8_MIN_TOP1 = 0.99  # an int8 file may change a few close calls, not more
EXPORT_ADVICE = ("Re-export with another opset or exporter (dynamo=True/False), or look for an operation that "
                 "behaves differently in eval mode or in ONNX (e.g. custom ops, in-place updates).")
INT8_ADVICE = ("Dynamic int8 changes too many of this model's decisions: ship the fp32 ONNX file, or train with "
               "quantization in the loop (distill quantize --method qat).")


@dataclass
class ParityReport:
    """How closely an exported model reproduces its PyTorch original on held-out inputs."""

    max_abs_diff: float  # largest |logit_onnx − logit_torch| over all examples and classes
    top1_agreement: float  # fraction of examples whose arg-max class is the same
    n: int  # examples compared

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class _Logits(nn.Module):
    """The model with its output reduced to the logits tensor: ONNX graphs return plain tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


class _TextLogits(_Logits):
    """A text classifier's logits from `input_ids` and `attention_mask`, the names every text
    runtime (ONNX Runtime, Optimum, Transformers.js) feeds."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return logits_of(self.model(torch.stack([input_ids, attention_mask], dim=1)))


def input_names(example: torch.Tensor) -> list[str]:
    """The ONNX input names for a model fed `example`: `input_ids` + `attention_mask` for token ids
    stacked on a mask (B, 2, L), `pixel_values` for images (B, C, H, W), else `inputs`."""
    if not example.dtype.is_floating_point and example.dim() == 3 and example.shape[1] == 2:
        return ["input_ids", "attention_mask"]
    return ["pixel_values"] if example.dim() == 4 else ["inputs"]


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: Path | str, *, opset: int | None = None,
                dynamic_batch: bool = True, dynamo: bool = False) -> Path:
    """Export `model` (in eval mode; its mode is restored after) to ONNX at `path`: inputs named as
    `input_names` says (a text model's sequence axis is dynamic too), output `logits`.

    The default is the TorchScript exporter (`dynamo=False`): on our zoo CNN/MLP/ResNet and the HF
    encoder it gives the same parity as the torch.export-based one (`dynamo=True`, needs onnxscript)
    in 0.1–1 s instead of 6–30 s on 2 cores, and it never specialises the batch size. PyTorch marks
    it deprecated; `dynamo=True` is the way forward once it is removed.

    The exporter writes into a temp directory; the finished file is then moved to `path` with
    `atomic_write_bytes` (temp file beside it + rename): a failed export leaves no file at `path`
    and an existing one untouched. Raises ModelError naming the operator ONNX lacks.
    """
    path = Path(path)
    x = example_inputs.detach().to(_device(model))
    if dynamic_batch and len(x) == 1:
        x = torch.cat([x, x])  # torch.export specialises a dimension of size 1; give it two rows
    was_training = model.training
    names = input_names(x)
    text = len(names) == 2
    wrapped = (_TextLogits(model) if text else _Logits(model)).eval()
    args = (x[:, 0], x[:, 1]) if text else (x,)
    axes = {0: "batch", 1: "sequence"} if text else {0: "batch"}
    if dynamo:  # one self-contained file (this exporter splits weights out by default)
        dims = {i: torch.export.Dim(name) for i, name in axes.items()}
        options = {"external_data": False,
                   "dynamic_shapes": tuple(dims for _ in names) if dynamic_batch else None}
    else:
        options = {"dynamic_axes": {**{n: axes for n in names}, "logits": {0: "batch"}}
                   if dynamic_batch else None}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
                warnings.filterwarnings("ignore", message=".*will be removed")
                torch.onnx.export(wrapped, args, str(out), input_names=names, output_names=["logits"],
                                  opset_version=opset, dynamo=dynamo, verbose=False, **options)
        except Exception as exc:  # the exporters raise many types; all become one actionable error
            raise ModelError(_export_failure(model, exc, opset, dynamo)) from exc
        finally:
            model.train(was_training)
        if len(list(Path(tmp).iterdir())) > 1:
            raise ModelError(f"{type(model).__name__} exported with external weight files (over 2 GB); "
                             "distill exports single-file ONNX models only.")
        atomic_write_bytes(path, out.read_bytes())
    return path


def quantize_onnx(src: Path | str, dst: Path | str, *, per_channel: bool = True) -> Path:
    """ONNX Runtime post-training *dynamic* quantization of `src` into `dst`: int8 weights for
    MatMul/Gemm/Conv, activations quantized on the fly per batch (no calibration data). Weights get
    one scale per output channel (`per_channel`): on the fine-tuned MiniLM classifier it keeps
    99.3% of the fp32 model's decisions where one scale per tensor keeps 98.9%.

    Written through a temp directory and `atomic_write_bytes`, like `export_onnx`: a failure leaves
    `dst` absent or untouched. `check_parity(model, dst, test, atol=inf, min_top1=...)` then measures
    how often the int8 file still picks the fp32 model's class.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ModelError("ONNX Runtime is not installed: pip install 'distill[export]'") from None
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ModelError(f"quantize_onnx: {src} does not exist; export the model first (export_onnx).")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / dst.name
        try:
            with _quiet("root"):  # ORT logs a generic "consider pre-processing" warning on every call
                quantize_dynamic(src, out, per_channel=per_channel, weight_type=QuantType.QInt8)
        except Exception as exc:  # ORT raises many types (onnx checker, shape inference, ValueError)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"ONNX Runtime could not quantize {src}: {first}. The fp32 file is unchanged; "
                             "serve it as is, or quantize in PyTorch instead (distill quantize).") from exc
        atomic_write_bytes(dst, out.read_bytes())
    return dst


def write_metadata(path: Path | str, props: dict[str, str]) -> Path:
    """Add `props` to the ONNX file's `metadata_props` (ONNX Runtime reads them as
    `session.get_modelmeta().custom_metadata_map`), replacing entries of the same keys; the file is
    rewritten with `atomic_write_bytes`."""
    try:
        import onnx
    except ImportError:
        raise ModelError("onnx is not installed: pip install 'distill[export]'") from None
    path = Path(path)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})
    atomic_write_bytes(path, model.SerializeToString())
    return path


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def unsupported_operator(message: str) -> str | None:
    """The operator an exporter's error names (`aten::fft_rfft`, `aten._linalg_svd`), if any."""
    for pattern in (r"operator '([\w:.]+)'", r"op='([\w:.]+)'", r"No ONNX function found for ([\w:.]+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def _export_failure(model: nn.Module, exc: Exception, opset: int | None, dynamo: bool) -> str:
    op = unsupported_operator(str(exc))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    what = f"its operator `{op}` has no ONNX conversion" if op else f"the exporter failed ({first})"
    other = "dynamo=False (TorchScript exporter)" if dynamo else "dynamo=True (torch.export exporter)"
    return (f"Cannot export {type(model).__name__} to ONNX (opset {opset or 'default'}): {what}. "
            f"Replace that operation in the model's forward with supported ones, try another opset, or "
            f"try {other}; or export --format safetensors instead.")


def ort_session(path: Path | str, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU; `threads` fixes the intra- and inter-op thread counts."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("ONNX Runtime is not installed: pip install 'distill[export]'") from None
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(nn.Module):
    """`model` answered by ONNX Runtime from its exported file, for timing a model in the runtime it
    ships in (`distill search` with `requirements.runtime: onnxruntime`). The PyTorch model is kept
    as a submodule, so parameter and size counts are its own."""

    def __init__(self, model: nn.Module, onnx_path: Path | str, threads: int | None = 1):
        super().__init__()
        self.model = model
        self.session = ort_session(onnx_path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_ort(self.session, x)


def as_onnxruntime(model: nn.Module, example_inputs: torch.Tensor, path: Path | str,
                   threads: int | None = 1) -> OnnxRuntimeModel:
    """Export `model` to ONNX at `path` (CPU, eval mode) and answer it with ONNX Runtime."""
    model = model.cpu().eval()
    export_onnx(model, example_inputs.cpu(), path)
    return OnnxRuntimeModel(model, path, threads)


def _run_ort(session: Any, x: torch.Tensor) -> torch.Tensor:
    """The session's logits for `x` in distill's layout ((B, 2, L) text goes in as its two inputs)."""
    names = [i.name for i in session.get_inputs()]
    x = x.cpu().numpy()
    feed = {names[0]: x[:, 0], names[1]: x[:, 1]} if len(names) == 2 else {names[0]: x}
    return torch.from_numpy(session.run(None, feed)[0])


def _batches(inputs: Dataset | torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield from inputs.split(batch_size)
    elif isinstance(inputs, Dataset):
        for batch in iter_batches(inputs, torch.arange(len(inputs)), batch_size):  # type: ignore[arg-type]
            yield batch["inputs"]
    else:
        yield from inputs


@torch.no_grad()
def check_parity(model: nn.Module, onnx_path: Path | str, inputs: Dataset | torch.Tensor | Iterable[torch.Tensor],
                 *, atol: float = 1e-3, min_top1: float = 0.999, batch_size: int = 512,
                 advice: str = EXPORT_ADVICE) -> ParityReport:
    """Run PyTorch (eval mode) and ONNX Runtime on the same held-out inputs; compare the logits.

    Args:
        inputs: A Dataset of {"inputs": ...} examples (e.g. the test split), a tensor of inputs,
            or an iterable of input batches.
        atol: Largest allowed |logit difference| over every example and class.
        min_top1: Smallest allowed fraction of examples with the same predicted class.
        advice: What the error tells the user to do when a bound is broken.

    Raises ExportError with both numbers when either bound is broken; the file is never deleted.
    """
    session = ort_session(onnx_path)
    was_training = model.training
    model.eval()
    device = _device(model)
    worst, same, n = torch.zeros(()), 0, 0
    try:
        for x in _batches(inputs, batch_size):
            expected = logits_of(model(x.to(device))).float().cpu()  # (B, C)
            got = _run_ort(session, x).float()  # (B, C)
            worst = torch.maximum(worst, (got - expected).abs().max())  # NaN propagates, unlike max()
            same += int((got.argmax(-1) == expected.argmax(-1)).sum())
            n += len(x)
    finally:
        model.train(was_training)
    report = ParityReport(max_abs_diff=float(worst), top1_agreement=same / max(n, 1), n=n)
    if n == 0:
        raise ExportError(f"check_parity got no inputs to compare {onnx_path} on; pass the test split.")
    if not (report.max_abs_diff <= atol and report.top1_agreement >= min_top1):  # NaN fails too
        raise ExportError(
            f"ONNX model {onnx_path} disagrees with {type(model).__name__} on {n} held-out inputs: "
            f"max |logit difference| {report.max_abs_diff:.3g} (tolerance {atol:g}), top-1 agreement "
            f"{report.top1_agreement:.4%} (required {min_top1:.2%}). The file is kept for inspection. {advice}")
    return report


def bench_onnx(model: nn.Module, onnx_path: Path | str, inputs: torch.Tensor, *, batch: int = 256,
               repeats: int = 100, rounds: int = 5, threads: int = 1) -> dict[str, float]:
    """Latency at batch 1 (p50, ms) and throughput at `batch` (examples/s): PyTorch eager vs ONNX
    Runtime, both on `threads` CPU threads, timed in interleaved rounds so a slow moment of the
    machine costs both alike. `ort_speedup` = eager p50 / ORT p50 at batch 1. The model is moved to
    the CPU and left in eval mode; `inputs` (N, ...) gives the batch-1 input and, repeated if N is
    smaller, the batch of `batch`."""
    session = ort_session(onnx_path, threads)
    runners = {"eager": model.cpu().eval(), "ort": lambda x: _run_ort(session, x)}
    one, many = inputs[:1].cpu(), inputs[:batch].cpu()
    if len(many) < batch:
        many = many.repeat(-(-batch // len(many)), *([1] * (many.dim() - 1)))[:batch]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    lat: dict[str, list[float]] = {k: [] for k in runners}
    thr: dict[str, list[float]] = {k: [] for k in runners}
    try:
        for _ in range(rounds):
            for name, run in runners.items():
                lat[name] += time_calls(run, one, repeats=max(1, repeats // rounds), warmup=2)  # type: ignore[arg-type]
                thr[name] += time_calls(run, many, repeats=max(1, repeats // (10 * rounds)), warmup=1)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name in runners:
        out[f"{name}_latency_b1_p50_ms"] = 1e3 * statistics.median(lat[name])
        out[f"{name}_throughput"] = batch / statistics.median(thr[name])
    out["ort_speedup"] = out["eager_latency_b1_p50_ms"] / out["ort_latency_b1_p50_ms"]
    out["ort_throughput_ratio"] = out["ort_throughput"] / out["eager_throughput"]
    return out
