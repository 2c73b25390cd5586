"""Out-of-fold teacher targets (`teacher.out_of_fold`): folds, the targets each row gets, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from distill.core.checkpoint import load_weights
from distill.core.errors import ConfigError
from distill.data.datasets import load_data
from distill.models.zoo import build_model
from distill.recipes.classify.config import load_config
from distill.recipes.classify.out_of_fold import fold_indices
from distill.recipes.classify.choice import plan_of

DIGITS = ["data.name=digits", "data.label_fraction=1"]


def test_folds_are_disjoint_cover_every_row_and_differ_in_size_by_at_most_one():
    folds = fold_indices(103, 4, seed=0)
    rows = torch.cat(folds)
    assert sorted(rows.tolist()) == list(range(103))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert all(torch.equal(a, b) for a, b in zip(folds, fold_indices(103, 4, seed=0)))


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.out_of_fold=1"], "greater than or equal to 2"),
    (["teacher.out_of_fold=3", "teacher.signal=live"], "out_of_fold .* needs one teacher .* and a cached signal"),
    (["teacher.out_of_fold=3", "recipe=function_matching"], "choose one"),
    (["teacher.out_of_fold=3", "teacher.signal=auto", "train.augment.mixup=1"], "remove one of them"),
])
def test_settings_out_of_fold_cannot_serve_are_refused_when_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_auto_uses_soft_targets_from_a_cache_with_out_of_fold_targets():
    cfg = load_config(None, [*DIGITS, "teacher.out_of_fold=3"])
    recipe = plan_of(cfg, load_data(cfg.data))
    assert (recipe.recipe, recipe.signal) == ("soft_targets", "cached")


def test_each_training_row_is_taught_by_the_fold_teacher_that_did_not_see_it(tmp_path, monkeypatch):
    from distill.recipes.classify import pipeline

    args = ["data.name=digits", "data.label_fraction=0.5", "data.limit=300", "teacher.out_of_fold=3", "train.epochs=1", "teacher.train.epochs=2",
            "student.kwargs={hidden: [16]}", "bench.repeats=3", "bench.throughput_batch=8", "baseline=false",
            f"output_dir={tmp_path}", f"teacher.cache_dir={tmp_path / 'cache'}", "quiet=true", "device=cpu"]
    seen = {}
    real = pipeline.train_student

    def spy(cfg, data, train_data, stage_dir, signal, *rest):
        seen["signal"], seen["data"] = signal, data
        return real(cfg, data, train_data, stage_dir, signal, *rest)

    monkeypatch.setattr(pipeline, "train_student", spy)
    cfg = load_config(None, args)
    run_dir = pipeline.run(cfg)
    data, table = seen["data"], seen["signal"].table
    folds = fold_indices(len(data.train), 3, cfg.teacher.train.seed)
    for i, fold in enumerate(folds):
        member = build_model(cfg.teacher, data.input_shape, data.num_classes)
        load_weights(run_dir / "teacher_folds" / f"fold-{i}" / "model.safetensors", member)
        with torch.no_grad():
            expected = member.eval()(data.train.inputs[fold])
        assert torch.allclose(table[fold], expected, atol=1e-5), f"fold {i}"
    main = build_model(cfg.teacher, data.input_shape, data.num_classes)
    load_weights(run_dir / "teacher" / "model.safetensors", main)
    n = len(data.train)
    with torch.no_grad():
        assert not torch.allclose(table[:n], main.eval()(data.train.inputs), atol=1e-3)  # not the main teacher's
        assert torch.allclose(table[n:], main(data.unlabeled.inputs), atol=1e-5)  # unlabelled: the main teacher's
    report = json.loads((run_dir / "report.json").read_text())
    assert report["recipe"]["out_of_fold"] == 3
    assert "out-of-fold targets from 3 fold teachers" in (run_dir / "report.md").read_text()
