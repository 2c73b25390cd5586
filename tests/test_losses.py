"""Loss functions: hand-computed values and the properties every distillation loss must keep."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.core.config import Schedule
from distill.losses.methods import CE, KD
from distill.losses.terms import cross_entropy, scheduled, soft_target_kl


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_soft_target_kl_matches_hand_computation():
    student, teacher, t = [0.0, 1.0], [2.0, -1.0], 2.0
    p_s = _softmax([x / t for x in student])
    p_t = _softmax([x / t for x in teacher])
    expected = t**2 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))

    got = soft_target_kl(torch.tensor([student]), torch.tensor([teacher]), t)

    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.5  # the example is far from trivial


def test_soft_target_kl_averages_over_the_batch():
    s = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    t = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    per_row = [soft_target_kl(s[i:i + 1], t[i:i + 1], 3.0).item() for i in range(2)]
    assert soft_target_kl(s, t, 3.0).item() == pytest.approx(sum(per_row) / 2, rel=1e-6)


def test_identical_logits_give_zero():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert soft_target_kl(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_squared_scaling():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    base = soft_target_kl(s, t, 1.0)
    # Scaling logits by T undoes the division by T, leaving only the T² factor.
    for temp in (2.0, 5.0):
        scaled = soft_target_kl(s * temp, t * temp, temp)
        assert scaled.item() == pytest.approx(temp**2 * base.item(), rel=1e-5)


def test_kd_with_ratio_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    out = KD(temperature=3.0, ratio=0.0)(s, t, y)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert "kd" not in out  # a term of weight 0 is not computed


def test_kd_mixes_terms_with_ratio():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    out = KD(temperature=2.0, ratio=0.25)(s, t, y)
    expected = 0.25 * soft_target_kl(s, t, 2.0) + 0.75 * F.cross_entropy(s, y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out) == {"loss", "kd", "ce"}


def test_kd_with_ratio_one_returns_only_the_kd_term_and_ignores_labels():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    out = KD(temperature=4.0, ratio=1.0)(s, t, None)  # labels may be absent
    assert set(out) == {"loss", "kd"}
    assert torch.equal(out["loss"], soft_target_kl(s, t, 4.0))


def test_kd_evaluates_schedules_at_progress():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 1, 2])
    kd = KD(temperature=Schedule(start=1.0, end=5.0), ratio=Schedule(start=1.0, end=0.0))
    start, middle, end = (kd(s, t, y, progress=p) for p in (0.0, 0.5, 1.0))
    assert start["loss"].item() == pytest.approx(soft_target_kl(s, t, 1.0).item(), rel=1e-6)
    assert middle["kd"].item() == pytest.approx(soft_target_kl(s, t, 3.0).item(), rel=1e-6)
    assert middle["loss"].item() == pytest.approx((0.5 * middle["kd"] + 0.5 * F.cross_entropy(s, y)).item(), rel=1e-6)
    assert end["loss"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert "kd" not in end  # its weight has reached 0


@pytest.mark.parametrize(("kind", "expected"), [
    ("linear", {0.0: 1.0, 0.25: 1.5, 0.5: 2.0, 1.0: 3.0}),
    ("cosine", {0.0: 1.0, 0.25: 1.0 + (1 - math.cos(math.pi / 4)), 0.5: 2.0, 1.0: 3.0}),
])
def test_scheduled_values(kind, expected):
    sched = Schedule(start=1.0, end=3.0, kind=kind)
    for progress, value in expected.items():
        assert scheduled(sched, progress) == pytest.approx(value)


def test_a_schedule_with_until_ramps_then_holds():
    warmup = Schedule(start=0.0, end=1.0, until=0.1)  # DKD's warm-up: the first tenth of training
    assert [scheduled(warmup, p) for p in (0.0, 0.05, 0.1, 0.5, 1.0)] == pytest.approx([0, 0.5, 1, 1, 1])


def test_scheduled_constant_is_float():
    assert scheduled(4, 0.7) == 4.0
    assert isinstance(scheduled(4, 0.7), float)


@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_gradients_stay_finite_with_extreme_logits(scale):
    teacher = torch.tensor([[scale, -scale, 0.0], [-scale, scale, 0.0]])
    student = torch.tensor([[-scale, scale, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    out = KD(temperature=4.0, ratio=0.9)(student, teacher, torch.tensor([0, 1]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_cross_entropy_with_probability_targets():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 3, generator=g)
    probs = torch.softmax(torch.randn(4, 3, generator=g), -1)
    expected = -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert cross_entropy(logits, probs).item() == pytest.approx(expected.item(), rel=1e-6)
    # one-hot probabilities are the same as class ids
    ids = torch.tensor([2, 0, 1, 1])
    assert cross_entropy(logits, F.one_hot(ids, 3).float()).item() == pytest.approx(
        cross_entropy(logits, ids).item(), rel=1e-6)


def test_ce_objective_needs_no_teacher():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    out = CE()(logits, None, y)
    assert not CE().needs_teacher and KD().needs_teacher
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


def test_every_registered_divergence_is_one_name_in_every_schema_and_in_kd():
    """A divergence is one registry entry: the config schemas' names are the registry's, and each one
    runs in the classic KD term, in `KD()` and in the token loss's config."""
    from typing import get_args

    from distill.losses.config import KDConfig, KDTerm, TokenKDConfig
    from distill.losses.divergences import DIVERGENCES, Kind, token_divergence

    assert get_args(Kind) == tuple(DIVERGENCES)
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    for name in DIVERGENCES:
        assert KDConfig(divergence=name).divergence == TokenKDConfig(divergence=name).divergence == name
        expected = 4.0 * token_divergence(s, teacher_logits=t, kind=name, temperature=2.0, jsd_beta=0.3, skew=0.2)
        out = KD(temperature=2.0, ratio=1.0, divergence=name, jsd_beta=0.3, skew=0.2)(s, t, None)
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert KDTerm(kind="kd", divergence=name).divergence == name
    with pytest.raises(ValueError):
        KDConfig(divergence="chi_squared")


def test_the_kd_section_reaches_the_objective_and_dkd_names_its_weights():
    from distill.losses.methods import Method
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.plan import kd_objective

    cfg = load_config(None, ["kd.divergence=reverse_kl", "kd.temperature=3", "kd.ratio=0.8", "kd.skew=0.3"])
    kd, ce = kd_objective(cfg.kd).terms
    assert (kd.divergence, kd.temperature, kd.weight, kd.skew, ce.weight) == ("reverse_kl", 3.0, 0.8, 0.3,
                                                                             pytest.approx(0.2))
    dkd = Method([{"kind": "dkd", "tckd_weight": 2.0, "nckd_weight": 4.0}]).terms[0]
    assert (dkd.tckd_weight, dkd.nckd_weight) == (2.0, 4.0)
