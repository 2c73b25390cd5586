"""The speed pass keeps results: fused optimizers, channels-last teachers, and resuming them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import distill.training.classify as training
import distill.training.optim as optim
from distill.core.checkpoint import load_training_state, save_training_state
from distill.losses.methods import KD
from distill.models.config import ModelConfig
from distill.models.zoo import CNN, build_model, channels_last
from distill.teachers.signals import LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig
from distill.training.optim import make_optimizer


def _config(name: str = "adamw", **overrides) -> TrainConfig:
    return TrainConfig.model_validate({"epochs": 1, "batch_size": 32, "optimizer": {"name": name, "lr": 0.01},
                                       **overrides})


def test_optimizers_are_fused_on_the_cpu():
    model = nn.Linear(4, 3)
    for name in ("adamw", "adam", "sgd"):
        assert make_optimizer(model, _config(name)).defaults["fused"] is True
    assert not optim.fused_ok([torch.zeros(3, dtype=torch.long)])  # integer tensors have no fused kernel
    assert not optim.fused_ok([])


def test_channels_last_keeps_a_cnns_outputs():
    torch.manual_seed(0)
    model, x = CNN((1, 12, 12), 5, [4, 8], fc=16).eval(), torch.randn(7, 1, 12, 12)
    expected = model(x)
    assert channels_last(model, x)
    assert model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


class _Views(nn.Module):
    """A forward that needs the default layout: `.view` on a convolution's output."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).view(len(x), -1))


def test_channels_last_leaves_models_it_cannot_help():
    views, x = _Views().train(), torch.randn(2, 1, 6, 6)
    assert not channels_last(views, x)
    assert views.conv.weight.is_contiguous() and views.training  # reverted, mode restored
    views(x)  # still runs
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    assert not channels_last(mlp, x)
    assert not channels_last(CNN((1, 6, 6), 3, [4]), torch.randn(2, 36))  # inputs are not images


def test_a_live_cnn_teacher_runs_channels_last_without_changing_the_student(digits, monkeypatch):
    spec = ModelConfig(arch="cnn", kwargs={"widths": [4, 8], "fc": 16})

    def distil() -> tuple[nn.Module, nn.Module]:
        teacher = build_model(spec, digits.input_shape, 10, seed=1)
        student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [16]}), digits.input_shape, 10, seed=0)
        fit(student, digits.train, objective=KD(2.0, 0.5), config=_config(), num_classes=10,
            teacher=LiveTeacher(teacher), quiet=True)
        return teacher, student

    teacher, fast = distil()
    assert teacher.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(training, "channels_last", lambda model, example: False)
    teacher, plain = distil()
    assert teacher.features[0][0].weight.is_contiguous()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_resuming_a_fused_optimizer_on_channels_last_weights_is_exact(tmp_path: Path):
    """Checkpoints hold Adam's moments contiguous; given back to a channels-last parameter as they
    are, PyTorch's fused AdamW silently applies wrong updates. load_training_state re-lays them out."""
    x = torch.randn(4, 3, 9, 9)

    def setup() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
        return conv, torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)

    def step(conv: nn.Module, opt: torch.optim.Optimizer) -> None:
        conv(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    conv, opt = setup()
    for _ in range(3):
        step(conv, opt)
    expected = conv.weight.detach().clone()
    conv, opt = setup()
    step(conv, opt)
    save_training_state(tmp_path / "s.safetensors", model=conv, optimizer=opt, scheduler=None, state={})
    conv, opt = setup()
    load_training_state(tmp_path / "s.safetensors", model=conv, optimizer=opt, scheduler=None)
    step(conv, opt)
    step(conv, opt)
    assert torch.equal(conv.weight.detach(), expected)
