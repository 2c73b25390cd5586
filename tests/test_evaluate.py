"""Evaluation metrics (hand-checked) and cost measurements."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.data.arrays import ArrayDataset
from distill.eval.bench import (
    count_parameters,
    measure,
    measure_models,
    peak_memory_mb,
    size_on_disk_mb,
)
from distill.eval.metrics import (
    classification_metrics,
    evaluate_model,
    expected_calibration_error,
    kl_divergence,
    predict,
)


def test_ece_matches_hand_computation():
    probs = torch.tensor([[0.95, 0.05],   # bin 9, correct
                          [0.82, 0.18],   # bin 8, correct
                          [0.12, 0.88],   # bin 8, wrong
                          [0.35, 0.65]])  # bin 6, correct
    labels = torch.tensor([0, 0, 0, 1])
    # Σ_bins |bin|/N · |acc(bin) − conf(bin)|
    expected = 1 / 4 * abs(1 - 0.95) + 2 / 4 * abs(0.5 - (0.82 + 0.88) / 2) + 1 / 4 * abs(1 - 0.65)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.275)


def test_ece_is_zero_for_perfect_calibration():
    probs = torch.tensor([[0.8, 0.2]] * 5 + [[0.25, 0.75]] * 4)
    labels = torch.tensor([0, 0, 0, 0, 1] + [1, 1, 1, 0])  # 80% and 75% correct
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    overconfident = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(overconfident, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)


def test_agreement_and_kl_with_identical_teacher():
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(1))
    m = classification_metrics(logits, labels, teacher_logits=logits.clone())
    assert m["agreement"] == 1.0
    assert m["kl_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_agreement_and_kl_hand_computed():
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 1.0]])  # probs (0.75, 0.25), disagree on row 2
    m = classification_metrics(student, torch.tensor([0, 0]), teacher_logits=teacher)
    assert m["agreement"] == 0.5  # row 1: both pick class 0 (student ties break to 0)
    p_t = [[0.75, 0.25], [1 / (1 + math.e), math.e / (1 + math.e)]]
    p_s = [[0.5, 0.5], [math.exp(2) / (1 + math.exp(2)), 1 / (1 + math.exp(2))]]
    kl = sum(t * math.log(t / s) for pt, ps in zip(p_t, p_s) for t, s in zip(pt, ps)) / 2
    assert m["kl_teacher"] == pytest.approx(kl, rel=1e-5)
    assert kl_divergence(teacher, student) == pytest.approx(kl, rel=1e-5)


def test_accuracy_per_class_and_nll():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 1, 0])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 0.5
    assert m["per_class_accuracy"][:2] == [0.5, 0.5]
    assert math.isnan(m["per_class_accuracy"][2])  # no examples of class 2
    assert "agreement" not in m
    log_p = torch.log_softmax(logits, -1)
    assert m["nll"] == pytest.approx(-log_p[torch.arange(4), labels].mean().item(), rel=1e-6)


def test_predict_keeps_order_and_training_mode():
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    ds = ArrayDataset(torch.randn(11, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(11))
    out = predict(model, ds, batch_size=4)
    with torch.no_grad():
        expected = model[0](ds.inputs)  # eval mode: no dropout
    torch.testing.assert_close(out, expected)
    assert model.training  # restored
    metrics, logits = evaluate_model(model, ds, batch_size=5)
    torch.testing.assert_close(logits, out)  # other batch sizes: other kernels, the last bits may differ
    assert metrics["accuracy"] == float((logits.argmax(-1) == 0).float().mean())


def test_bench_measure_reports_every_cost():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    threads = torch.get_num_threads()
    out = measure(model, (1, 4, 4), threads=1, batch=8, repeats=3)
    assert set(out) == {"params", "size_mb", "latency_b1_p50_ms", "latency_b1_p95_ms", "latency_b1_iqr_ms",
                        "throughput", "throughput_low", "throughput_high", "peak_memory_mb", "architecture"}
    assert all(v > 0 for k, v in out.items() if k not in ("architecture", "latency_b1_iqr_ms"))
    assert out["throughput_low"] <= out["throughput"] <= out["throughput_high"]
    assert out["params"] == 16 * 8 + 8 + 8 * 3 + 3 == count_parameters(model)
    assert out["latency_b1_p95_ms"] >= out["latency_b1_p50_ms"]
    assert torch.get_num_threads() == threads  # restored


def test_size_and_peak_memory_grow_with_the_model():
    small, big = nn.Linear(10, 10), nn.Linear(100, 100)
    assert size_on_disk_mb(big) > 4 * 100 * 100 / 1e6 > size_on_disk_mb(small)
    x = torch.randn(4, 10)
    # parameters + the largest leaf's input and output activations
    assert peak_memory_mb(small, x) == pytest.approx((110 + 40 + 40) * 4 / 1e6)


def test_measure_models_times_every_model_side_by_side():
    small = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    big = nn.Sequential(nn.Flatten(), nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 4))
    out = measure_models({"small": small, "big": big}, (1, 4, 4), threads=1, batch=64, repeats=20)
    assert set(out) == {"small", "big"}
    assert out["big"]["params"] > out["small"]["params"]
    assert out["big"]["size_mb"] > out["small"]["size_mb"]
    assert all(v > 0 for m in out.values() for k, v in m.items() if k not in ("architecture", "latency_b1_iqr_ms"))
    assert out["big"]["architecture"] != out["small"]["architecture"]


def test_identical_architectures_timed_outside_each_others_spread_are_called_noisy():
    from distill.eval.bench import architecture, timing_notes

    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    assert architecture(a) == architecture(b) != architecture(nn.Linear(8, 5))
    same = {"architecture": architecture(a), "throughput": 1000.0, "throughput_low": 900.0, "throughput_high": 1100.0}
    assert timing_notes({"baseline": same, "distilled": {**same, "throughput": 1050.0}}) == []
    busy = {**same, "throughput": 700.0, "throughput_low": 650.0, "throughput_high": 750.0}
    (note,) = timing_notes({"baseline": same, "distilled": busy})
    assert "same architecture" in note and "noisy" in note
    other = {**busy, "architecture": architecture(nn.Linear(8, 5))}
    assert timing_notes({"teacher": other, "distilled": same}) == []  # different models may time apart
