"""Model zoo and user models by import path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.core.errors import ModelError
from distill.models.config import ModelConfig
from distill.models.zoo import build_model, logits_of

ZOO = [
    ModelConfig(arch="mlp", kwargs={"hidden": [8, 8], "dropout": 0.1}),
    ModelConfig(arch="cnn", kwargs={"widths": [4, 8], "fc": 8}),
    ModelConfig(arch="resnet", kwargs={"depth": 8, "width": 4}),
]


@pytest.mark.parametrize("spec", ZOO, ids=lambda s: s.arch)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 8, 8)])
def test_zoo_models_predict_num_classes(spec, shape):
    model = build_model(spec, shape, num_classes=7, seed=0).eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_cnn_with_too_many_stages_for_the_input():
    with pytest.raises(ModelError, match="fewer widths"):
        build_model(ModelConfig(arch="cnn", kwargs={"widths": [2, 2, 2, 2]}), (1, 8, 8), 10)


def test_import_path_with_kwargs():
    model = build_model(ModelConfig(arch="torch.nn:Linear", kwargs={"in_features": 5, "out_features": 3}),
                        (5,), num_classes=3)
    assert isinstance(model, nn.Linear)
    assert model.weight.shape == (3, 5)


def test_import_path_receives_input_shape_and_num_classes(tmp_path: Path, monkeypatch):
    (tmp_path / "user_models_for_test.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, input_shape, num_classes, width=4):
                super().__init__()
                self.seen = (tuple(input_shape), num_classes, width)
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                                         nn.ReLU(), nn.Linear(width, num_classes))

            def forward(self, x):
                return self.net(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(arch="user_models_for_test:Tiny", kwargs={"width": 6}), (1, 8, 8), 10)
    assert model.seen == ((1, 8, 8), 10, 6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_arch_suggests_the_nearest():
    with pytest.raises(ModelError) as exc:
        build_model(ModelConfig(arch="mpl"), (1, 8, 8), 10)
    assert "Did you mean `mlp`" in str(exc.value)
    assert "module:Class" in str(exc.value) or "package.module:Class" in str(exc.value)


def test_import_path_errors_name_the_module_and_attribute():
    with pytest.raises(ModelError, match="Cannot import `no_such_module_xyz`"):
        build_model(ModelConfig(arch="no_such_module_xyz:Net"), (4,), 2)
    with pytest.raises(ModelError, match="Did you mean `Linear`"):
        build_model(ModelConfig(arch="torch.nn:Linaer"), (4,), 2)


def test_bad_kwargs_list_accepted_arguments():
    with pytest.raises(ModelError) as exc:
        build_model(ModelConfig(arch="mlp", kwargs={"hiden": [4]}), (1, 8, 8), 10)
    assert "hiden" in str(exc.value) and "hidden" in str(exc.value)


@pytest.mark.parametrize("depth", [9, 21])
def test_resnet_bad_depth(depth):
    with pytest.raises(ModelError, match="6n\\+2"):
        build_model(ModelConfig(arch="resnet", kwargs={"depth": depth}), (1, 8, 8), 10)


def test_seeded_build_is_reproducible_and_leaves_global_rng_untouched():
    spec = ModelConfig(arch="cnn", kwargs={"widths": [4], "fc": 8})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(spec, (1, 8, 8), 10, seed=1)
    b = build_model(spec, (1, 8, 8), 10, seed=1)
    c = build_model(spec, (1, 8, 8), 10, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head[-1].weight, c.head[-1].weight)


def test_logits_of_accepts_tensors_objects_and_tuples():
    t = torch.ones(2, 3)

    class Out:
        logits = t

    assert logits_of(t) is t and logits_of(Out()) is t and logits_of((t, None)) is t
    with pytest.raises(ModelError, match="return logits"):
        logits_of({"x": t})
