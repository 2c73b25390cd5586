"""Several teachers: each combine mode against hand-computed values, the errors, mixed archs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.core.checkpoint import save_weights
from distill.core.errors import ConfigError, ModelError
from distill.data.arrays import ArrayDataset
from distill.losses.methods import KD
from distill.models.config import ModelConfig
from distill.models.ensemble import (
    Ensemble,
    build_ensemble,
    check_class_counts,
    combine,
    member_weights,
)
from distill.models.zoo import build_model
from distill.teachers.signals import fingerprint

# Member 0 is sure of class 0 on both samples; member 1 is uniform on sample 0 and sure of
# class 1 on sample 1. Logits are log-probabilities, so p_k can be read off directly.
P = [[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]],
     [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]]  # (B=2, K=2, C=3)
LOGITS = torch.tensor(P).log()
SHAPE = (1, 8, 8)


def _geo(p: list[list[float]], w: list[float]) -> list[float]:
    """log of the normalised weighted geometric mean Π_k p_k^w_k, by hand."""
    g = [math.prod(pk[c] ** wk for pk, wk in zip(p, w)) for c in range(3)]
    return [math.log(x / sum(g)) for x in g]


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def _close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-5)


def test_mean_is_the_normalised_geometric_mean():
    _close(combine(LOGITS, "mean"), [_geo(P[0], [0.5, 0.5]), _geo(P[1], [0.5, 0.5])])
    # sample 1: sqrt(.5·.25), sqrt(.25·.5), .25 → classes 0 and 1 tie, class 2 below
    out = combine(LOGITS, "mean")
    assert out[1, 0] == pytest.approx(out[1, 1].item()) and out[1, 2] < out[1, 0]


def test_mean_is_softened_like_one_teacher():
    """softmax(combined / T) is the geometric mean of the members' softened distributions."""
    z, t = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)), 4.0
    softened = (z / t).log_softmax(-1).mean(1).log_softmax(-1)
    torch.testing.assert_close((combine(z, "mean") / t).log_softmax(-1), softened)


def test_weighted_normalises_fixed_weights():
    expected = [_geo(P[0], [0.75, 0.25]), _geo(P[1], [0.75, 0.25])]
    _close(combine(LOGITS, "weighted", [3, 1]), expected)


def test_weighted_one_zero_is_the_first_member():
    z = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(combine(z, "weighted", [1, 0]), z[:, 0].log_softmax(-1))


def test_confidence_weights_follow_negative_entropy():
    h0, h_uniform, h1 = _entropy(P[0][0]), math.log(3), _entropy(P[1][1])
    w0 = 1 / (1 + math.exp(h0 - h_uniform))  # softmax over members of −H, τ = 1
    assert w0 > 0.5  # the sure member counts more than the uniform one on sample 0
    expected = [_geo(P[0], [w0, 1 - w0]), _geo(P[1], [0.5, 0.5])]  # equal entropies on sample 1
    assert h0 == pytest.approx(h1)
    _close(combine(LOGITS, "confidence"), expected)
    w_sharp = 1 / (1 + math.exp((h0 - h_uniform) / 0.1))
    sharp = member_weights(LOGITS.log_softmax(-1), "confidence", temperature=0.1)
    _close(sharp[0:1], [[w_sharp, 1 - w_sharp]])


def test_confidence_weights_sum_to_one_per_sample():
    z = torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(2)) * 3
    w = member_weights(z.log_softmax(-1), "confidence", temperature=0.5)
    assert w.shape == (6, 4) and (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(6))


def test_correctness_weights_each_member_by_its_probability_of_the_target():
    targets = torch.tensor([2, 1])
    w_a = 0.25 / (0.25 + 1 / 3)  # sample 0, class 2: p = .25 vs 1/3
    w_b = 0.25 / (0.25 + 0.5)  # sample 1, class 1: p = .25 vs .5
    expected = [_geo(P[0], [w_a, 1 - w_a]), _geo(P[1], [w_b, 1 - w_b])]
    _close(combine(LOGITS, "correctness", targets=targets), expected)


def test_correctness_trusts_the_member_that_is_right():
    right, wrong = torch.tensor([[8.0, 0, 0]]), torch.tensor([[0, 8.0, 0]])
    z = torch.stack([wrong, right], dim=1)  # (1, 2, 3); the target is class 0
    w = member_weights(z.log_softmax(-1), "correctness", targets=torch.tensor([0]))
    assert w[0, 1] > 0.99
    assert Ensemble([nn.Linear(2, 3), nn.Linear(2, 3)], "correctness").uses_targets
    assert not Ensemble([nn.Linear(2, 3), nn.Linear(2, 3)], "confidence").uses_targets
    assert combine(z, "correctness", targets=torch.tensor([0])).argmax(-1).item() == 0
    mean = combine(z, "mean")[0]
    assert mean[0].item() == pytest.approx(mean[1].item())  # the mean cannot choose between them


def test_correctness_with_soft_targets_and_without_targets():
    soft = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # one-hot probabilities = class ids
    torch.testing.assert_close(combine(LOGITS, "correctness", targets=soft),
                               combine(LOGITS, "correctness", targets=torch.tensor([2, 1])))
    mixed = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])  # mixup targets: Σ_c q_c p_kc
    w = member_weights(LOGITS.log_softmax(-1), "correctness", targets=mixed)
    p0, p1 = 0.5 * 0.5 + 0.5 * 0.25, 1 / 3  # sample 0: Σ_c q_c p_kc for each member
    torch.testing.assert_close(w[0], torch.tensor([p0 / (p0 + p1), p1 / (p0 + p1)]))
    no_targets = combine(LOGITS, "correctness")
    torch.testing.assert_close(no_targets, combine(LOGITS, "mean"))


@pytest.mark.parametrize(("weights", "words"), [
    ([1, -1], "non-negative"), ([0, 0], "all zero"), ([1, 1, 1], "3 values but the ensemble has 2"),
    (None, "one weight per member"),
])
def test_bad_weights_name_the_config_key(weights, words):
    with pytest.raises(ConfigError, match="teacher.weights") as err:
        combine(LOGITS, "weighted", weights)
    assert words in str(err.value)


def test_unknown_mode_and_stray_weights():
    with pytest.raises(ConfigError, match="Did you mean `confidence`"):
        combine(LOGITS, "confidense")
    with pytest.raises(ConfigError, match="teacher.temperature"):
        combine(LOGITS, "confidence", temperature=0.0)
    with pytest.raises(ConfigError, match="only used with teacher.combine=weighted"):
        Ensemble([nn.Linear(2, 3), nn.Linear(2, 3)], "mean", [1, 1])


def _zoo(arch: str, num_classes: int = 10, seed: int = 0, **kwargs) -> nn.Module:
    spec = ModelConfig(arch=arch, kwargs=kwargs)
    return build_model(spec, SHAPE, num_classes, seed=seed)


def test_members_with_different_class_counts_are_named():
    members = [_zoo("mlp", 10, hidden=[8]), _zoo("cnn", 7, widths=[4], fc=8)]
    members[1].train()
    with pytest.raises(ModelError) as err:
        check_class_counts(members, torch.zeros(2, *SHAPE), ["mlp", "cnn"])
    msg = str(err.value)
    assert "teacher.members[0] (mlp) predicts 10" in msg
    assert "teacher.members[1] (cnn) predicts 7" in msg
    assert members[1].training  # train mode restored after the dry forward
    with pytest.raises(ModelError, match="predicts 7"):  # also caught when run directly
        Ensemble(members)(torch.zeros(2, *SHAPE))


def test_a_single_member_is_not_an_ensemble():
    with pytest.raises(ConfigError, match="at least 2 members"):
        Ensemble([_zoo("mlp", hidden=[8])])


def test_mixed_architectures_teach_a_student_through_kd():
    members = [_zoo("mlp", hidden=[16]), _zoo("cnn", widths=[4], fc=8)]
    members[0].train()
    ens = Ensemble(members, "confidence")
    assert not members[0].training and not any(p.requires_grad for p in ens.parameters())
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3))
    teacher_logits = ens(x)
    assert teacher_logits.shape == (5, 10) and ens.member_logits(x).shape == (5, 2, 10)
    student = _zoo("mlp", seed=1, hidden=[8])
    parts = KD(temperature=4.0, ratio=0.9)(student(x), teacher_logits, torch.arange(5))
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"]) and parts["loss"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in ens.parameters())  # nothing flows into the frozen members
    same = KD(temperature=4.0, ratio=1.0)(teacher_logits, teacher_logits, torch.arange(5))["loss"]
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # a copy of the ensemble learns nothing


def test_teacher_caches_tell_combine_modes_apart():
    members = [_zoo("mlp", hidden=[8]), _zoo("mlp", seed=1, hidden=[8])]
    data = ArrayDataset(torch.zeros(3, *SHAPE), torch.zeros(3))
    keys = {fingerprint(Ensemble(members, m), data, torch.float32) for m in ("mean", "confidence")}
    keys.add(fingerprint(Ensemble(members, "weighted", [1, 2]), data, torch.float32))
    assert len(keys) == 3


def _save(tmp_path: Path, name: str, model: nn.Module) -> Path:
    save_weights(tmp_path / name, model)
    return tmp_path / name


def test_build_an_ensemble_of_checkpoints_of_one_arch(tmp_path: Path):
    """Same arch, several checkpoints (seeds or last epochs): the members load different weights."""
    kw = {"hidden": [8]}
    paths = [_save(tmp_path, f"seed{s}.safetensors", _zoo("mlp", seed=s, **kw)) for s in range(3)]
    specs = [ModelConfig(arch="mlp", kwargs=kw, checkpoint=p) for p in paths]
    ens = build_ensemble(specs, SHAPE, 10, "weighted", [1, 1, 2])
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4))
    expected = torch.stack([_zoo("mlp", seed=s, **kw).eval()(x) for s in range(3)], dim=1)
    torch.testing.assert_close(ens.member_logits(x), expected)
    torch.testing.assert_close(ens(x), combine(expected, "weighted", [1, 1, 2]))
    assert ens.names == ["mlp"] * 3 and not ens.training


def test_build_ensemble_errors(tmp_path: Path):
    path = _save(tmp_path, "a.safetensors", _zoo("mlp", hidden=[8]))
    trained = ModelConfig(arch="mlp", kwargs={"hidden": [8]}, checkpoint=path)
    untrained = ModelConfig(arch="cnn", kwargs={"widths": [4], "fc": 8})
    msg = r"teacher.members\[1\].checkpoint.*must be a trained model.*train-teacher"
    with pytest.raises(ConfigError, match=msg):
        build_ensemble([trained, untrained], SHAPE, 10)
    with pytest.raises(ConfigError, match="at least 2 members"):
        build_ensemble([trained], SHAPE, 10)
    with pytest.raises(ConfigError, match="teacher.weights"):
        build_ensemble([trained, trained], SHAPE, 10, "weighted", [1])
    five = ModelConfig(arch="mlp", kwargs={"hidden": [8], "num_classes": 5},
                       checkpoint=_save(tmp_path, "b.safetensors", _zoo("mlp", 5, hidden=[8])))
    with pytest.raises(ModelError, match="predicts 10.*predicts 5"):
        build_ensemble([trained, five], SHAPE, 10)
