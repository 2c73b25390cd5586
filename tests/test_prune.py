"""Pruning: structured pruning shrinks real tensors along traced data flow; unstructured zeros weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distill.compress.prune import (
    magnitude_prune,
    prunable_groups,
    prune_channels,
    prune_to_size,
    shrink_to,
)
from distill.core.checkpoint import load_weights, read_metadata, save_weights
from distill.core.errors import ModelError
from distill.models.zoo import CNN, MLP, ResNet

X = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))


def test_removing_dead_neurons_changes_nothing_but_the_size():
    torch.manual_seed(0)
    mlp = MLP((1, 12, 12), 5, hidden=[16]).eval()
    with torch.no_grad():  # half of the hidden neurons never fire: pruning must pick exactly those
        mlp.net[1].weight[8:] = 0
        mlp.net[1].bias[8:] = 0
    pruned, report = prune_channels(mlp, 0.5, X)
    assert pruned.net[1].weight.shape == (8, 144) and pruned.net[3].weight.shape == (5, 8)
    torch.testing.assert_close(pruned(X), mlp(X))
    assert report.widths == {"net.1": (16, 8)} and report.params_after < report.params_before


def test_cnn_channels_are_cut_through_batchnorm_pooling_and_flatten():
    cnn = CNN((1, 12, 12), 3, widths=[8, 16], convs=1, fc=32).eval()
    groups = {g.producer: g for g in prunable_groups(cnn, X)}
    assert groups["features.2.0"].norms == ["features.2.1"]
    assert groups["features.2.0"].consumers == [("head.1", 9)]  # 16 channels × 3×3 after two pools
    pruned, report = prune_channels(cnn, 0.5, X)
    assert pruned.features[0][1].running_mean.shape == (4,) and pruned.head[1].in_features == 8 * 9
    assert pruned(X).shape == (4, 3) and report.reduction > 0.5


def test_channels_feeding_a_residual_sum_stay():
    resnet = ResNet((1, 12, 12), 3, depth=8, width=4).eval()
    producers = {g.producer for g in prunable_groups(resnet, X)}
    assert producers == {"features.1.body.0.0", "features.2.body.0.0", "features.3.body.0.0"}  # inside blocks only
    pruned, _ = prune_channels(resnet, 0.5, X)
    assert pruned(X).shape == (4, 3)

    class AllResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(x) + self.a(x)

    with pytest.raises(ModelError, match="no channels that can be removed"):
        prune_channels(AllResidual(), 0.5, torch.randn(2, 4))


def test_a_target_size_is_met_and_an_impossible_one_is_explained():
    cnn = CNN((1, 12, 12), 3, widths=[8, 16], convs=1, fc=32).eval()
    _, report = prune_to_size(cnn, 0.8, X)
    assert 0.8 <= report.reduction < 0.86
    head_only = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    wide_output = nn.Sequential(head_only, nn.ReLU(), nn.Linear(3, 1000))  # 3 → at least 1 neuron
    with pytest.raises(ModelError, match="cannot lose 90% of its parameters.*at most 52%"):
        prune_to_size(wide_output, 0.9, X)


def test_a_pruned_checkpoint_loads_into_a_freshly_built_model(tmp_path):
    cnn = CNN((1, 12, 12), 3, widths=[8, 16], convs=1, fc=32).eval()
    pruned, report = prune_channels(cnn, 0.6, X)
    save_weights(tmp_path / "p.safetensors", pruned, {"widths": {k: v[1] for k, v in report.widths.items()}})
    fresh = CNN((1, 12, 12), 3, widths=[8, 16], convs=1, fc=32).eval()
    fresh = shrink_to(fresh, read_metadata(tmp_path / "p.safetensors")["widths"], X)
    load_weights(tmp_path / "p.safetensors", fresh)
    torch.testing.assert_close(fresh(X), pruned(X))


def test_magnitude_pruning_zeroes_the_smallest_weights_globally():
    cnn = CNN((1, 12, 12), 3, widths=[8, 16], convs=1, fc=32)
    pruned, sparsity = magnitude_prune(cnn, 0.7)
    assert sparsity == pytest.approx(0.7, abs=1e-3)
    smallest_kept = min(m.weight[m.weight != 0].abs().min() for m in pruned.modules() if isinstance(m, nn.Linear))
    largest_cut = max(w.weight[p.weight == 0].abs().max() for w, p in zip(cnn.modules(), pruned.modules())
                      if isinstance(w, nn.Linear) and (p.weight == 0).any())
    assert largest_cut <= smallest_kept
    with pytest.raises(ModelError, match=r"fraction in \(0, 1\)"):
        magnitude_prune(cnn, 1.5)


def test_an_untraceable_model_gets_a_way_forward():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="torch.fx.*keep_layers"):
        prune_channels(Branchy(), 0.5, torch.randn(2, 4))


def test_distill_prune_recovers_and_saves_weights_that_reload(tmp_path, capsys):
    from distill.cli import main
    from distill.data.datasets import load_data
    from distill.recipes.classify.config import load_config

    cfg = load_config(None, ["data.name=digits"])
    data = load_data(cfg.data)
    teacher = CNN(data.input_shape, 10, widths=[16, 32], convs=1, fc=128)  # the default config's teacher
    save_weights(tmp_path / "t.safetensors", teacher)
    code = main(["prune", "data.name=digits", f"teacher.checkpoint={tmp_path / 't.safetensors'}", "train.epochs=1",
                 "--reduction", "0.6", "--out", str(tmp_path / "p"), "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["reduction"] >= 0.6 and "recovered" in summary["accuracy"]
    fresh = shrink_to(CNN(data.input_shape, 10, widths=[16, 32], convs=1, fc=128),
                      read_metadata(tmp_path / "p" / "model.safetensors")["widths"], torch.zeros(2, 1, 8, 8))
    load_weights(tmp_path / "p" / "model.safetensors", fresh)
    assert main(["prune", "data.name=digits", "--reduction", "0.5", "--out", str(tmp_path / "q")]) == 2
    assert "starts from a trained model" in capsys.readouterr().err
