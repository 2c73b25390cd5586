"""Validation beyond accuracy, on hand-made logits: regressions, confusion, calibration, disagreements."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distill.eval.metrics import calibration_bins, expected_calibration_error
from distill.eval.validate import confusion_matrix, top_disagreements, validate


def _onehot(classes: list[int], num_classes: int = 3, scale: float = 5.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float()


# 3 classes, 3 examples each; the teacher is right everywhere except once on class 0.
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
TEACHER = [0, 0, 1, 1, 1, 1, 2, 2, 2]
STUDENT = [0, 0, 0, 0, 2, 1, 2, 2, 0]  # class 1: −2 of 3, class 2: −1 of 3, class 0: +1 of 3


def test_per_class_regressions_have_the_right_sign_and_worst_first():
    v = validate(_onehot(TEACHER), _onehot(STUDENT), torch.tensor(LABELS))
    assert [r.group for r in v.per_class] == [1, 2, 0]
    worst, middle, better = v.per_class
    assert (worst.n, worst.teacher_accuracy, worst.student_accuracy) == (3, 1.0, pytest.approx(1 / 3))
    assert worst.delta == pytest.approx(-2 / 3) and middle.delta == pytest.approx(-1 / 3)
    assert better.delta == pytest.approx(+1 / 3)  # the student beat the teacher on class 0
    assert v.per_slice is None


def test_per_slice_regressions_group_by_the_given_ids():
    slices = ["day", "night", "day", "night", "night", "day", "day", "day", "night"]
    v = validate(_onehot(TEACHER), _onehot(STUDENT), torch.tensor(LABELS), slices=slices)
    by_slice = {r.group: r for r in v.per_slice}
    assert by_slice["night"].n == 4 and by_slice["day"].n == 5
    # night: examples 1, 3, 4, 8 — teacher right on all 4, student on 1 (example 1)
    assert by_slice["night"].delta == pytest.approx(1 / 4 - 1)
    assert v.per_slice[0].group == "night"
    with pytest.raises(ValueError, match="slices has 2 entries"):
        validate(_onehot(TEACHER), _onehot(STUDENT), torch.tensor(LABELS), slices=[0, 1])


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    v = validate(_onehot(TEACHER), _onehot(STUDENT), torch.tensor(LABELS))
    assert v.confusion == [[3, 0, 0],
                           [1, 1, 1],
                           [1, 0, 2]]
    assert confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 0]), 2) == [[0, 0], [2, 0]]


def _sym_kl(a: torch.Tensor, b: torch.Tensor) -> float:
    p, q = a.softmax(-1).tolist(), b.softmax(-1).tolist()
    return sum((x - y) * math.log(x / y) for x, y in zip(p, q))  # KL(p‖q) + KL(q‖p)


def test_disagreements_are_ranked_by_symmetric_kl_or_probability_gap():
    teacher = torch.tensor([[4.0, 0.0, 0.0],   # agree: never listed
                            [1.0, 0.0, 0.0],   # mild disagreement
                            [6.0, 0.0, 0.0],   # confident teacher, student barely disagrees
                            [0.5, 0.0, 0.0]])  # unsure teacher, very confident student
    student = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 8.0]])
    labels = torch.tensor([0, 0, 0, 2])
    kls = [_sym_kl(teacher[i], student[i]) for i in range(4)]
    n, top = top_disagreements(teacher, student, labels, top_n=10)
    assert n == 3 and [d.index for d in top] == sorted([1, 2, 3], key=lambda i: -kls[i])
    assert [d.symmetric_kl for d in top] == pytest.approx(sorted(kls[1:], reverse=True), rel=1e-5)
    first = next(d for d in top if d.index == 3)
    assert (first.label, first.teacher_prediction, first.student_prediction) == (2, 0, 2)
    assert first.teacher_confidence == pytest.approx(float(teacher[3].softmax(-1)[0]))
    assert first.student_confidence == pytest.approx(float(student[3].softmax(-1)[2]))

    gaps = [float(teacher[i].softmax(-1)[0] - student[i].softmax(-1)[0]) for i in range(4)]
    _, by_gap = top_disagreements(teacher, student, labels, top_n=2, rank_by="probability_gap",
                                  indices=torch.tensor([10, 11, 12, 13]))
    assert [d.index - 10 for d in by_gap] == sorted([1, 2, 3], key=lambda i: -gaps[i])[:2]


def test_reliability_bins_sum_to_n_and_give_the_ece():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(200, 5, generator=g) * 3, torch.randn(200, 5, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    v = validate(teacher, student, labels, n_bins=10)
    for who, logits in (("teacher", teacher), ("student", student)):
        cal = v.calibration[who]
        assert len(cal.bins) == 10 and sum(b.count for b in cal.bins) == 200
        ece = sum(b.count / 200 * abs(b.accuracy - b.confidence) for b in cal.bins)
        assert cal.ece == pytest.approx(ece, abs=1e-6)
        assert cal.ece == pytest.approx(expected_calibration_error(logits.softmax(-1), labels, 10), abs=1e-7)
        for b in cal.bins:
            assert b.count == 0 or b.lower <= b.confidence <= b.upper


def test_binning_matches_the_per_bin_definition():
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(300, 4, generator=g).mul(2).softmax(-1)
    labels = torch.randint(0, 4, (300,), generator=g)
    conf, pred = probs.max(-1)
    which = torch.clamp((conf * 15).long(), max=14)
    confidence, accuracy, count = calibration_bins(probs, labels)
    for b in range(15):
        mask = which == b
        assert int(count[b]) == int(mask.sum())
        if mask.any():
            assert float(confidence[b]) == pytest.approx(float(conf[mask].mean()), abs=1e-6)
            assert float(accuracy[b]) == pytest.approx(float((pred[mask] == labels[mask]).float().mean()))


def test_validation_serialises_to_plain_json():
    v = validate(_onehot(TEACHER), _onehot(STUDENT), torch.tensor(LABELS), slices=[0, 1, 0, 1, 1, 0, 0, 0, 1])
    d = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert d["n"] == 9 and d["n_disagreements"] == 4 and d["agreement"] == pytest.approx(5 / 9)
    assert set(d) >= {"per_class", "per_slice", "confusion", "calibration", "disagreements"}
    assert set(d["disagreements"][0]) >= {"index", "label", "teacher_prediction", "teacher_confidence",
                                          "student_prediction", "student_confidence", "symmetric_kl"}
