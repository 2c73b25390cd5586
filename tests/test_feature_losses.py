"""Feature, attention and relational losses: hand-computed values, invariances, gradient direction."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses.terms import (
    attention_map_loss,
    attention_transfer,
    contrastive_kd,
    dkd,
    hint_loss,
    rkd_angle,
    rkd_distance,
    soft_target_kl,
)


def descends(loss_fn, student: torch.Tensor, *rest) -> bool:
    """One small gradient step on the student lowers the loss (and the gradient is finite)."""
    s = student.clone().requires_grad_(True)
    before = loss_fn(s, *rest)
    before.backward()
    assert torch.isfinite(s.grad).all()
    with torch.no_grad():
        after = loss_fn(s - 1e-2 * s.grad, *rest)
    return after.item() < before.item()


def test_hint_loss_hand_values():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]])
    assert hint_loss(s, t).item() == pytest.approx(2.0)  # ((1-3)² + 0) / 2
    assert hint_loss(s, s, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert hint_loss(s, -s, "cosine").item() == pytest.approx(2.0)
    maps = torch.randn(2, 3, 4, 4)
    assert hint_loss(maps, 5 * maps, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # along channels
    assert descends(hint_loss, torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="'mse' or 'cosine'"):
        hint_loss(s, t, "l1")


def test_attention_transfer_hand_value_and_channel_independence():
    s = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    t = torch.tensor([2.0, 1.0]).view(1, 1, 1, 2)
    # maps [1, 4]/√17 and [4, 1]/√17: squared differences 9/17 each, mean 9/17
    assert attention_transfer(s, t).item() == pytest.approx(9 / 17)
    f = torch.randn(2, 3, 4, 4)
    assert attention_transfer(f, torch.cat([f, f], 1)).item() == pytest.approx(0.0, abs=1e-7)
    assert descends(attention_transfer, torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4))


def test_rkd_is_blind_to_scale_and_rotation_and_descends():
    e = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    assert rkd_distance(3 * e, e).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(2 * e @ q, e).item() == pytest.approx(0.0, abs=1e-6)
    wide = torch.randn(6, 16)
    assert rkd_distance(e, wide).item() > 0 and rkd_angle(e, wide).item() > 0  # widths may differ
    assert descends(rkd_distance, e, wide) and descends(rkd_angle, e, wide)


def test_rkd_distance_hand_value():
    s = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 (mean 2) → 0.5, 1.5, 1.0
    t = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1 (mean 4/3) → 0.75, 1.5, 0.75
    # off-diagonal differences (twice each): −0.25, 0, 0.25 → Huber 0.5·d² = 1/32, 0, 1/32
    assert rkd_distance(s, t).item() == pytest.approx(2 * (2 / 32) / 9)


def test_dkd_decomposes_classic_kd():
    """KD = TCKD + (1 − p_t(target))·NCKD (Zhao et al., eq. 7): one sample, β = 1 − p_t(target)."""
    torch.manual_seed(0)
    s, t, y = torch.randn(1, 5), torch.randn(1, 5), torch.tensor([2])
    temp = 2.0
    p_target = (t / temp).softmax(1)[0, 2].item()
    want = soft_target_kl(s, t, temp)
    got = dkd(s, t, y, tckd_weight=1.0, nckd_weight=1 - p_target, temperature=temp)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    assert dkd(t, t, y).item() == pytest.approx(0.0, abs=1e-6)
    assert descends(lambda z, tt, yy: dkd(z, tt, yy), torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    assert math.isfinite(dkd(torch.full((2, 3), 50.0), torch.zeros(2, 3), torch.tensor([0, 1])).item())


def test_contrastive_kd_hand_value_and_descent():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale does not matter: embeddings are normalised
    # row 0: logits [1/τ, 0], target 0 → log(1 + e^{-1/τ}); same for row 1.
    assert contrastive_kd(s, t, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)
    swapped = contrastive_kd(s.flip(0), t, temperature=0.5)
    assert swapped.item() > contrastive_kd(s, t, temperature=0.5).item()  # wrong pairings cost more
    g = torch.Generator().manual_seed(0)
    assert descends(contrastive_kd, torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g))


def test_attention_map_loss_hand_values_and_head_averaging():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (B=1, H=1, L=2, L=2)
    s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    kl_row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attention_map_loss(s, t, "kl").item() == pytest.approx(kl_row0 / 2, rel=1e-5)  # mean over 2 rows
    assert attention_map_loss(s, t, "mse").item() == pytest.approx(2 * 0.25**2 / 4)  # 4 entries
    two_heads = torch.cat([t, t], 1)
    assert attention_map_loss(t, two_heads).item() == pytest.approx(0.0, abs=1e-6)  # heads averaged first
    with pytest.raises(ValueError, match="different sequence lengths"):
        attention_map_loss(torch.rand(1, 1, 3, 3), t)
