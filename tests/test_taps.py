"""Taps by module path: hooks on any model (dict outputs included), shapes, adapters, clear errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import DictNet
from torch import nn

from distill.core.errors import ConfigError, ModelError
from distill.models.taps import Taps, first_tensor, make_adapter, resolve_module


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


def test_an_output_key_named_as_a_layer_is_explained_without_an_unrelated_suggestion():
    model = DictNet()
    assert "features" in model(torch.randn(1, 1, 6, 6))  # an output key, not a module
    with pytest.raises(ConfigError) as exc:
        Taps(model, ["features"], key="student.taps")
    assert "not by a key of the model's output" in str(exc.value)
    assert "Nearest" not in str(exc.value) and "Some valid paths: body" in str(exc.value)


def test_first_tensor_reads_tuples_dicts_and_output_objects():
    t = torch.ones(1)
    assert first_tensor((None, {"a": t})) is t
    assert first_tensor([1, "x"]) is None


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
