"""Cost measurements of a model: size, CPU/GPU latency at batch 1, throughput, peak memory.

Latency and throughput are medians of repeated, warmed-up runs; on CUDA the device is
synchronised around every timed call.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.checkpoint import save_weights
from distill.models.zoo import count_parameters, device_of


def size_on_disk_mb(model: nn.Module) -> float:
    """Size of the model's safetensors file, in MB (10^6 bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_weights(path, model)
        return path.stat().st_size / 1e6


@torch.no_grad()
def time_calls(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 5) -> list[float]:
    """Wall-clock seconds of `repeats` forward passes on `x`, after `warmup` untimed ones."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def peak_memory_mb(model: nn.Module, x: torch.Tensor) -> float:
    """Peak memory of one forward pass, in MB.

    On CUDA, the allocator's measured peak. On CPU (no allocator statistics), an estimate:
    parameter and buffer bytes plus the largest input+output activation of any leaf module.
    """
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats(x.device)
        model(x)
        return torch.cuda.max_memory_allocated(x.device) / 1e6
    largest = [0]

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        sizes = [t.numel() * t.element_size() for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest[0] = max(largest[0], sum(sizes))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return (state + largest[0]) / 1e6


def measure(model: nn.Module, input_shape: tuple[int, ...], *, threads: int = 1, batch: int = 256,
            repeats: int = 50) -> dict[str, float]:
    """Size, latency at batch 1 (p50/p95, ms), throughput at `batch` (examples/s), peak memory."""
    return measure_models({"model": model}, input_shape, threads=threads, batch=batch, repeats=repeats)["model"]


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], *, threads: int = 1,
                   batch: int = 256, repeats: int = 50, rounds: int = 5) -> dict[str, dict[str, float]]:
    """`measure` for several models, timed side by side: each of `rounds` rounds times every model
    in turn, so a slow moment of the machine costs all of them alike and ratios stay fair."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {k: m.eval() for k, m in models.items()}
        inputs = {k: _inputs(m, input_shape, batch) for k, m in models.items()}
        lat: dict[str, list[float]] = {k: [] for k in models}
        thr: dict[str, list[float]] = {k: [] for k in models}
        per_round = max(4, max(repeats, 20) // rounds)
        for _ in range(rounds):
            for k, m in models.items():
                lat[k] += time_calls(m, inputs[k][0], repeats=per_round, warmup=2)
                thr[k] += time_calls(m, inputs[k][1], repeats=max(2, repeats // (10 * rounds)), warmup=1)
        return {k: _costs(m, inputs[k][1], sorted(lat[k]), sorted(thr[k]), batch) for k, m in models.items()}
    finally:
        torch.set_num_threads(previous_threads)


def _inputs(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of batch 1 and `batch`: the model's own `example_inputs(batch, input_shape)` when it has
    one (token models need valid ids), else standard normal values."""
    make = getattr(model, "example_inputs", None)
    if callable(make):
        return make(1, input_shape), make(batch, input_shape)
    device = device_of(model)
    return torch.randn(1, *input_shape, device=device), torch.randn(batch, *input_shape, device=device)


def _costs(model: nn.Module, many: torch.Tensor, lat: list[float], thr: list[float],
           batch: int) -> dict[str, float]:
    return {
        "params": count_parameters(model),
        "size_mb": size_on_disk_mb(model),
        "latency_b1_p50_ms": 1e3 * statistics.median(lat),
        "latency_b1_p95_ms": 1e3 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "latency_b1_iqr_ms": 1e3 * (_quantile(lat, 0.75) - _quantile(lat, 0.25)),
        "throughput": batch / statistics.median(thr),
        "throughput_low": batch / _quantile(thr, 0.75),  # the interquartile range of the timed batches
        "throughput_high": batch / _quantile(thr, 0.25),
        "peak_memory_mb": peak_memory_mb(model, many),
        "architecture": architecture(model),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def architecture(model: nn.Module) -> str:
    """A fingerprint of what a model computes (its class and its parameters' names and shapes): two
    models with the same one run the same operations and must time alike."""
    import hashlib

    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items())
    return f"{type(model).__name__}-" + hashlib.sha256(shapes.encode()).hexdigest()[:8]


def timing_notes(costs: dict[str, dict[str, Any]]) -> list[str]:
    """Timings that contradict themselves: models of one architecture whose throughput (or forward time)
    ranges, the interquartile range over interleaved rounds, do not overlap: the machine was busy."""
    notes = []
    names = [k for k in costs if "architecture" in costs[k]]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = costs[a], costs[b]
            key, unit = ("throughput", "examples/s") if "throughput_low" in x else ("forward_ms", "ms per block")
            if x["architecture"] == y["architecture"] and (x[f"{key}_high"] < y[f"{key}_low"] or
                                                            y[f"{key}_high"] < x[f"{key}_low"]):
                notes.append(f"{a} and {b} are the same architecture but timed at {x[key]:,.4g} vs {y[key]:,.4g} "
                             f"{unit}, outside each other's spread: the machine was busy while timing, so the speed "
                             "ratios here are noisy. Re-measure on an idle machine.")
    return notes


@torch.no_grad()
def interleaved_ms(calls: dict[str, tuple[nn.Module, Any]], rounds: int = 5, repeats: int = 3) -> dict[str, dict[str, Any]]:
    """Forward time in ms of each (model, input) in `calls`, timed side by side: every round times every
    model in turn, so a busy moment costs them alike. Median with its interquartile range
    (`forward_ms_low` / `_high`) and the model's `architecture`."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, (model, x) in calls.items():
            times[k] += time_calls(model.eval(), x, repeats=repeats, warmup=1)
    out = {}
    for k, t in times.items():
        t = sorted(t)
        out[k] = {"forward_ms": 1e3 * statistics.median(t), "forward_ms_low": 1e3 * _quantile(t, 0.25),
                  "forward_ms_high": 1e3 * _quantile(t, 0.75), "architecture": architecture(calls[k][0])}
    return out


def machine_description(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.system()} {cpu}, torch {torch.__version__}, {threads} CPU thread(s) for timing{gpu}"
