"""The fused full-vocabulary KL gives the written-out KL's values and gradients (`distill.losses.fused_kl`)."""

from __future__ import annotations

import pytest
import torch

from distill.losses.divergences import divergence, per_token_divergence, token_divergence
from distill.losses.fused_kl import full_kl


def written_out(student, teacher, temperature, reverse):
    log_q = torch.log_softmax(student.double() / temperature, -1)
    log_p = torch.log_softmax(teacher.double() / temperature, -1)
    return divergence(log_p, log_q, kind="reverse_kl" if reverse else "forward_kl")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_values_and_gradients_equal_the_written_out_kl(reverse, temperature):
    torch.manual_seed(0)
    student = (3 * torch.randn(2, 7, 50)).requires_grad_()
    teacher = 3 * torch.randn(2, 7, 50)
    teacher[0, 0, :10] = float("-inf")  # a teacher that rules tokens out
    student.data[1, 2, 5:9] = -50.0  # a student nearly certain they are not next
    weights = torch.rand(2, 7)
    ours = full_kl(student, teacher, temperature=temperature, reverse=reverse)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), student)
    reference_input = student.detach().double().requires_grad_()
    theirs = written_out(reference_input, teacher, temperature, reverse)
    (g_theirs,) = torch.autograd.grad((theirs * weights.double()).sum(), reference_input)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours.double(), g_theirs, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()


def test_below_the_floor_the_student_still_gets_the_true_gradient():
    """Where the student's log-probability is below LOG_FLOOR, the written-out forward KL's floor
    stops the gradient; the fused one keeps ∂KL(p ‖ q)/∂z = q − p, pushing the student back towards
    a token the teacher gives mass (reverse KL's gradient there is 0 either way: it is q-weighted)."""
    student = torch.zeros(1, 4)
    student[0, 0] = -1e4
    teacher = torch.zeros(1, 4)
    student.requires_grad_()
    full_kl(student, teacher).sum().backward()
    assert student.grad[0, 0] == pytest.approx(-0.25, abs=1e-6)  # q ≈ 0, p = 1/4
    student.grad = None
    full_kl(student, teacher, reverse=True).sum().backward()
    assert student.grad[0, 0] == 0


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_in_double(reverse):
    torch.manual_seed(1)
    student = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: full_kl(s, teacher, temperature=1.5, reverse=reverse), (student,))


def test_the_divergence_library_takes_the_fused_path_only_for_a_constant_teachers_kls(monkeypatch):
    import distill.losses.divergences as d

    calls = []
    monkeypatch.setattr(d, "full_kl", lambda *a, **k: calls.append(k) or torch.zeros(a[0].shape[:-1]))
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    per_token_divergence(s, teacher_logits=t, kind="reverse_kl", temperature=2.0)
    per_token_divergence(s, teacher_logits=t, kind="jsd")
    per_token_divergence(s, teacher_logits=t.requires_grad_(), kind="forward_kl")  # a teacher being trained
    assert calls == [{"temperature": 2.0, "reverse": True}]


def test_bfloat16_logits_get_a_bfloat16_gradient_of_the_float32_kl():
    torch.manual_seed(2)
    student = torch.randn(5, 40).bfloat16().requires_grad_()
    teacher = torch.randn(5, 40).bfloat16()
    loss = token_divergence(student, teacher_logits=teacher, kind="forward_kl")
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), written_out(student.detach(), teacher, 1.0, False).mean(),
                               atol=1e-5, rtol=1e-4)
