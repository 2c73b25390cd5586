"""Taps by module path: hooks on any model (dict outputs included), shapes, adapters, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import ConfigError, ModelError
from distill.taps import Taps, build_adapters, first_tensor, make_adapter, resolve_module, tap_shapes


class DictNet(nn.Module):
    """A user model whose forward returns a dict, as many custom models do."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.head(f.mean((2, 3))), "features": f}


def test_taps_keep_the_outputs_of_named_layers_of_a_dict_model():
    model = DictNet()
    x = torch.randn(2, 1, 6, 6)
    with Taps(model, ["body.0", "body.2"]) as taps:
        out = model(x)
    torch.testing.assert_close(taps.outputs["body.2"], out["features"])
    assert taps.outputs["body.0"].shape == (2, 8, 6, 6)
    model(x)  # hooks are gone outside the block
    assert len(model.body[0]._forward_hooks) == 0


def test_a_wrong_path_fails_before_any_compute_naming_the_nearest():
    with pytest.raises(ConfigError, match=r"`student.taps`: DictNet has no module `body.3`.*Nearest: body.2"):
        Taps(DictNet(), ["body.3"], key="student.taps")
    with pytest.raises(ConfigError, match="no module ``"):
        resolve_module(DictNet(), "")


def test_first_tensor_reads_tuples_dicts_and_output_objects():
    t = torch.ones(1)
    assert first_tensor((None, {"a": t})) is t
    assert first_tensor([1, "x"]) is None


def test_shapes_come_from_one_dry_forward_and_leave_the_mode_alone():
    model = DictNet().train()
    shapes = tap_shapes(model, ["body.2", "head"], torch.randn(2, 1, 5, 5))
    assert shapes == {"body.2": (2, 8, 5, 5), "head": (2, 3)} and model.training


def test_a_module_the_forward_never_calls_is_named():
    model = DictNet()
    model.unused = nn.Linear(2, 2)
    with pytest.raises(ModelError, match="unused did not run"):
        tap_shapes(model, ["unused"], torch.randn(1, 1, 4, 4))


def test_adapters_match_widths_and_refuse_what_cannot_be_matched():
    conv = make_adapter((2, 4, 5, 5), (2, 8, 5, 5), "t")
    assert isinstance(conv, nn.Conv2d) and conv(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)
    lin = make_adapter((2, 7, 16), (2, 7, 32), "t")
    assert isinstance(lin, nn.Linear) and lin(torch.randn(2, 7, 16)).shape == (2, 7, 32)
    assert isinstance(make_adapter((2, 8), (2, 8), "t"), nn.Identity)
    with pytest.raises(ModelError, match=r"\(2, 4, 5, 5\) cannot be mapped to teacher output \(2, 8, 10, 10\).*AdaptiveAvgPool2d"):
        make_adapter((2, 4, 5, 5), (2, 8, 10, 10), "t")
    with pytest.raises(ModelError, match="different ranks"):
        make_adapter((2, 4, 5, 5), (2, 8), "t")


def test_adapters_train_with_the_student_but_stay_out_of_its_weights():
    student, teacher = DictNet(width=4), DictNet(width=8)
    x = torch.randn(3, 1, 5, 5)
    pairs = [("body.2", "body.2")]
    adapters = build_adapters(pairs, tap_shapes(student, ["body.2"], x), tap_shapes(teacher, ["body.2"], x))
    before = adapters[0].weight.detach().clone()
    opt = torch.optim.SGD(list(student.parameters()) + list(adapters.parameters()), lr=0.1)
    with Taps(student, ["body.2"]) as s_taps, Taps(teacher, ["body.2"]) as t_taps:
        student(x)
        with torch.no_grad():
            teacher(x)
    loss = nn.functional.mse_loss(adapters[0](s_taps.outputs["body.2"]), t_taps.outputs["body.2"])
    loss.backward()
    opt.step()
    assert not torch.equal(adapters[0].weight, before)  # the adapter learned
    assert not any(k.startswith(("adapters", "0.")) for k in student.state_dict())  # not part of the student
