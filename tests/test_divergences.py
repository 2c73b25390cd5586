"""Token-level divergences: hand values, limits, symmetry, masks, sparse = full, finite gradients."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses.divergences import KINDS, divergence, generalized_jsd, kl, token_divergence


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_kl_matches_a_hand_computed_value():
    p, q = [0.7, 0.2, 0.1], [0.5, 0.3, 0.2]
    expected = sum(a * math.log(a / b) for a, b in zip(p, q))
    out = token_divergence(torch.tensor(q).log(), teacher_logits=torch.tensor(p).log(), kind="forward_kl")
    assert out.item() == pytest.approx(expected, rel=1e-6)
    reverse = sum(b * math.log(b / a) for a, b in zip(p, q))
    out = token_divergence(torch.tensor(q).log(), teacher_logits=torch.tensor(p).log(), kind="reverse_kl")
    assert out.item() == pytest.approx(reverse, rel=1e-6)


def test_tvd_and_skew_kl_hand_values():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    assert divergence(p.log(), q.log(), kind="tvd").item() == pytest.approx(0.2, rel=1e-6)
    m = 0.1 * p + 0.9 * q
    expected = float((p * (p / m).log()).sum())
    assert divergence(p.log(), q.log(), kind="skew_kl", skew=0.1).item() == pytest.approx(expected, rel=1e-6)
    m_rev = 0.1 * q + 0.9 * p
    expected = float((q * (q / m_rev).log()).sum())
    assert divergence(p.log(), q.log(), kind="skew_reverse_kl", skew=0.1).item() == pytest.approx(expected,
                                                                                                    rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_distributions_give_zero(kind):
    s = _logits(2, 5, 11)
    assert token_divergence(s, teacher_logits=s.clone(), kind=kind).abs().item() < 1e-6


def test_jsd_reaches_the_kls_continuously_at_its_limits():
    log_p = _logits(4, 9, seed=1).double().log_softmax(-1)  # float64: β(1−β) is tiny near the limits
    log_q = _logits(4, 9, seed=2).double().log_softmax(-1)
    fwd, rev = kl(log_p, log_q), kl(log_q, log_p)
    assert torch.allclose(generalized_jsd(log_p, log_q, 0.0), fwd)
    assert torch.allclose(generalized_jsd(log_p, log_q, 1.0), rev)
    for eps in (1e-3, 1e-5):  # the error shrinks with β → 0 and β → 1
        assert torch.allclose(generalized_jsd(log_p, log_q, eps), fwd, rtol=200 * eps)
        assert torch.allclose(generalized_jsd(log_p, log_q, 1 - eps), rev, rtol=200 * eps)


def test_jsd_at_one_half_is_symmetric_and_others_are_not():
    log_p = _logits(3, 7, seed=3).log_softmax(-1)
    log_q = _logits(3, 7, seed=4).log_softmax(-1)
    assert torch.allclose(generalized_jsd(log_p, log_q, 0.5), generalized_jsd(log_q, log_p, 0.5))
    assert torch.allclose(divergence(log_p, log_q, kind="tvd"), divergence(log_q, log_p, kind="tvd"))
    assert not torch.allclose(kl(log_p, log_q), kl(log_q, log_p))


def test_skew_kls_with_no_skew_are_the_plain_kls():
    log_p = _logits(3, 7, seed=5).log_softmax(-1)
    log_q = _logits(3, 7, seed=6).log_softmax(-1)
    assert torch.allclose(divergence(log_p, log_q, kind="skew_kl", skew=0.0), kl(log_p, log_q))
    assert torch.allclose(divergence(log_p, log_q, kind="skew_reverse_kl", skew=0.0), kl(log_q, log_p))


def test_masked_positions_are_ignored_and_all_masked_is_zero():
    s, t = _logits(2, 4, 6, seed=7), _logits(2, 4, 6, seed=8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    t_garbage = t.clone()
    t_garbage[~mask] = 1e3 * torch.randn_like(t_garbage[~mask])
    a = token_divergence(s, teacher_logits=t, mask=mask, kind="jsd")
    b = token_divergence(s, teacher_logits=t_garbage, mask=mask, kind="jsd")
    assert torch.allclose(a, b)
    none = token_divergence(s, teacher_logits=t, mask=torch.zeros(2, 4, dtype=torch.bool))
    assert none.item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_topk_equals_full_when_k_is_the_vocabulary(kind):
    s, t = _logits(2, 3, 10, seed=9), _logits(2, 3, 10, seed=10)
    logprobs, indices = t.log_softmax(-1).topk(10, dim=-1)
    for temperature in (1.0, 2.0):
        full = token_divergence(s, teacher_logits=t, kind=kind, temperature=temperature)
        sparse = token_divergence(s, teacher_topk_logprobs=logprobs, teacher_topk_indices=indices, kind=kind,
                                  temperature=temperature)
        assert sparse.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)


def test_sparse_topk_with_small_k_keeps_the_tail_mass():
    s, t = _logits(1, 50, seed=11), _logits(1, 50, seed=12, scale=1.0)
    logprobs, indices = t.log_softmax(-1).topk(5, dim=-1)
    out = token_divergence(s, teacher_topk_logprobs=logprobs, teacher_topk_indices=indices)
    full = token_divergence(s, teacher_logits=t)
    assert 0 < out.item() <= full.item() + 1e-6  # merging bins can only lower a KL (data processing)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_finite_for_near_zero_probabilities(kind):
    s = _logits(2, 8, seed=13).requires_grad_()
    t = torch.full((2, 8), -1e4)
    t[:, 0] = 1e4  # the teacher is certain: every other token has probability ~0
    token_divergence(s, teacher_logits=t, kind=kind).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    s.grad = None
    logprobs, indices = t.log_softmax(-1).topk(3, dim=-1)
    token_divergence(s, teacher_topk_logprobs=logprobs, teacher_topk_indices=indices, kind=kind).backward()
    assert torch.isfinite(s.grad).all()


def test_forward_kl_gradient_moves_the_student_toward_the_teacher():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    before = token_divergence(s, teacher_logits=t)
    before.backward()
    with torch.no_grad():
        after = token_divergence(s - 0.1 * s.grad, teacher_logits=t)
    assert after < before and s.grad[0, 0] < 0  # raise the teacher's favourite token


def test_bad_arguments_are_clear_errors():
    s = _logits(2, 5)
    with pytest.raises(ValueError, match="same shape"):
        token_divergence(s, teacher_logits=_logits(2, 6))
    with pytest.raises(ValueError, match="teacher_logits, or both"):
        token_divergence(s)
    with pytest.raises(ValueError, match="Unknown divergence"):
        token_divergence(s, teacher_logits=s, kind="hellinger")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"jsd_beta must be in \[0, 1\]"):
        token_divergence(s, teacher_logits=s, kind="jsd", jsd_beta=1.5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("sparse", [False, True])
def test_chunked_loss_equals_the_naive_loss_and_its_gradients(kind, sparse):
    from distill.losses.divergences import chunked_token_divergence

    g = torch.Generator().manual_seed(14)
    hidden = torch.randn(2, 7, 16, generator=g, requires_grad=True)  # (B, T, d)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)  # (V, d)
    t_logits = 2 * torch.randn(2, 7, 50, generator=g)
    mask = torch.rand(2, 7, generator=g) > 0.3
    teacher = ({"teacher_topk_logprobs": t_logits.log_softmax(-1).topk(8, -1).values,
                "teacher_topk_indices": t_logits.log_softmax(-1).topk(8, -1).indices}
               if sparse else {"teacher_logits": t_logits})
    naive = token_divergence(hidden @ weight.T, kind=kind, mask=mask, temperature=2.0, **teacher)
    naive_grads = torch.autograd.grad(naive, (hidden, weight))
    chunked = chunked_token_divergence(hidden, weight, kind=kind, mask=mask, temperature=2.0, chunk_size=4,
                                       **teacher)
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    assert chunked.item() == pytest.approx(naive.item(), rel=1e-5)
    for a, b in zip(chunked_grads, naive_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_loss_with_everything_masked_is_zero_with_zero_gradient():
    from distill.losses.divergences import chunked_token_divergence

    hidden = torch.randn(1, 5, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    out = chunked_token_divergence(hidden, weight, teacher_logits=torch.randn(1, 5, 9),
                                   mask=torch.zeros(1, 5, dtype=torch.bool), chunk_size=2)
    assert out.item() == 0.0
    out.backward()  # still part of the graph, so a training step can call backward on it
    assert torch.all(hidden.grad == 0)
