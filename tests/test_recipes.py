"""Recipes, the transfer set, the loss-scale guard and the report's doctor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill import CE, KD, distill
from distill.core.errors import ConfigError, DataError
from distill.data.arrays import UNLABELED, ArrayDataset
from distill.data.augment import AugmentConfig
from distill.data.datasets import load_data
from distill.eval.doctor import diagnose, diagnose_lm
from distill.losses.terms import cross_entropy, term_scales
from distill.recipes.classify.config import load_config
from distill.recipes.classify.pipeline import baseline_budget, plan_of
from distill.recipes.classify.plan import resolve
from distill.training.classify import ClassifierTask
from distill.training.config import TrainConfig

DIGITS = ["data.name=digits", "data.label_fraction=1"]


@pytest.mark.parametrize(("override", "message"), [
    ("kd.ratio=1.5", "`kd.ratio`: ratio must lie in \\[0, 1\\].*got 1.5"),
    ("kd.ratio=-0.1", "`kd.ratio`: ratio must lie in \\[0, 1\\]"),
    ("kd.temperature=-1", "`kd.temperature`: the temperature must be a finite number > 0.*got -1"),
    ("kd.temperature=0", "`kd.temperature`: the temperature must be a finite number > 0"),
    ("kd.temperature={start: 4, end: 0}", "`kd.temperature`: the temperature must be"),
    ("losses=[{kind: kd, temperature: 0}]", "`losses.0.kd.temperature`: the temperature must be"),
])
def test_kd_settings_out_of_range_are_refused_when_read(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_kd_refuses_out_of_range_values_in_python():
    with pytest.raises(ConfigError, match="temperature.*> 0"):
        KD(temperature=0)
    with pytest.raises(ConfigError, match=r"ratio.*\[0, 1\]"):
        KD(ratio=1.5)


def test_a_recipe_that_needs_a_live_teacher_refuses_a_cache_before_any_compute():
    with pytest.raises(ConfigError, match="function_matching .* a logit cache cannot do"):
        load_config(None, ["recipe=function_matching", "teacher.signal=cached"])


def test_auto_recipe_is_function_matching_for_images_with_a_live_teacher():
    cfg = load_config(None, DIGITS)
    recipe = plan_of(cfg, load_data(cfg.data))
    assert (recipe.recipe, recipe.signal) == ("function_matching", "live")
    assert (recipe.augment.shift, recipe.augment.mixup) == (2, 1.0)
    assert (recipe.objective.terms[0].temperature, recipe.objective.terms[0].weight) == (1.0, 1.0)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["teacher.signal=cached"], ("soft_targets", "cached", 2.0, 0.5)),
    (["recipe=soft_targets"], ("soft_targets", "cached", 2.0, 0.5)),
    (["recipe=soft_targets", "kd.ratio=0.9", "train.augment.shift=1"], ("soft_targets", "live", 2.0, 0.9)),
])
def test_soft_targets_keep_the_config_and_cache_unless_something_needs_the_teacher_live(overrides, expected):
    cfg = load_config(None, [*DIGITS, *overrides])
    r = plan_of(cfg, load_data(cfg.data))
    assert (r.recipe, r.signal, r.objective.terms[0].temperature, r.objective.terms[0].weight) == expected


def test_label_fraction_keeps_a_stratified_share_and_makes_the_rest_unlabelled():
    full = load_data(load_config(None, DIGITS).data)
    cfg = load_config(None, [*DIGITS, "data.label_fraction=0.2"])
    few = load_data(cfg.data)
    assert len(few.train) + len(few.unlabeled) == len(full.train)
    assert abs(len(few.train) - 0.2 * len(full.train)) <= 10 and len(few.val) < len(full.val)
    assert len(few.test) == len(full.test)
    assert bool((few.unlabeled.labels == UNLABELED).all())
    counts = torch.bincount(few.train.labels, minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 2  # stratified (digits classes differ in size by a few)


def test_unlabeled_array_file_is_prepared_like_the_dataset_inputs(tmp_path):
    from sklearn.datasets import load_digits

    raw = load_digits().images[:30]  # the dataset's own units (0..16)
    np.save(tmp_path / "extra.npy", raw.reshape(30, -1))  # flat rows are reshaped to (1, 8, 8)
    cfg = load_config(None, [*DIGITS, f"data.unlabeled={tmp_path / 'extra.npy'}"])
    data = load_data(cfg.data)
    assert data.unlabeled.inputs.shape == (30, 1, 8, 8)
    everything = torch.cat([data.train.inputs, data.val.inputs, data.test.inputs]).flatten(1)
    nearest = torch.cdist(data.unlabeled.inputs.flatten(1), everything).min(1).values
    assert float(nearest.max()) < 1e-4  # each one is exactly a dataset image, standardised the same way


def test_unlabeled_inputs_of_another_shape_name_both_shapes(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((5, 3, 8, 8), dtype=np.float32))
    cfg = load_config(None, [*DIGITS, f"data.unlabeled={tmp_path / 'bad.npy'}"])
    with pytest.raises(DataError, match=r"data.unlabeled.*\(3, 8, 8\).*\(1, 8, 8\)"):
        load_data(cfg.data)
    with pytest.raises(ConfigError, match="`data.unlabeled`: .*missing.npy does not exist"):
        load_config(None, [*DIGITS, f"data.unlabeled={tmp_path / 'missing.npy'}"])


def test_cross_entropy_counts_labelled_examples_only():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, UNLABELED, 2, UNLABELED])
    expected = nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert torch.allclose(cross_entropy(logits, labels), expected)
    assert float(cross_entropy(logits, torch.full((4,), UNLABELED))) == 0.0
    soft = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0.5, 0.5], [0, 0, 0]])  # zero rows: unlabelled
    manual = -(soft * logits.log_softmax(1)).sum() / 2
    assert torch.allclose(cross_entropy(logits, soft), manual)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 6, generator=g) + 2 * nn.functional.one_hot(y, 6)[:, :6].float(), y


def test_distill_learns_from_unlabelled_inputs_and_refuses_them_without_a_teacher():
    torch.manual_seed(0)
    x, y = _blobs(300, 0)
    teacher = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        teacher[0].weight.copy_(torch.eye(6)[:3] * 4)
        teacher[0].bias.zero_()
    labelled = ArrayDataset(x[:10], y[:10])
    student = nn.Sequential(nn.Linear(6, 3))
    result = distill(teacher, student, labelled, unlabeled=x[10:], epochs=20, batch_size=32, lr=0.05, quiet=True,
                     val_data=ArrayDataset(x[:10], y[:10]))
    agree = (result.model(x[10:]).argmax(1) == teacher(x[10:]).argmax(1)).float().mean()
    assert float(agree) > 0.9  # taught on 290 unlabelled inputs it never saw a label for
    with pytest.raises(ConfigError, match="unlabeled inputs are taught by the teacher"):
        distill(teacher, nn.Linear(6, 3), labelled, loss=CE(), unlabeled=x[10:], epochs=1, quiet=True)


def test_the_plain_student_gets_as_many_steps_as_the_distilled_one():
    cfg = load_config(None, [*DIGITS, "data.label_fraction=0.1", "train.epochs=4", "train.batch_size=32"])
    data = load_data(cfg.data)
    plain = baseline_budget(cfg.train, data)
    steps = lambda n, e: e * -(-n // 32)  # noqa: E731
    assert steps(len(data.train), plain.epochs) >= steps(len(data.train) + len(data.unlabeled), 4)
    assert steps(len(data.train), plain.epochs - 1) < steps(len(data.train) + len(data.unlabeled), 4)
    assert baseline_budget(cfg.train, load_data(load_config(None, DIGITS).data)) == cfg.train  # no transfer set


def test_tied_validation_accuracy_is_broken_by_lower_nll():
    best = {"epoch": 0, "val_accuracy": 0.9, "val_nll": 0.5}
    better = ClassifierTask.better  # what the engine asks after each epoch
    assert better({"epoch": 1, "val_accuracy": 0.9, "val_nll": 0.4}, best)
    assert not better({"epoch": 1, "val_accuracy": 0.9, "val_nll": 0.6}, best)
    assert not better({"epoch": 1, "val_accuracy": 0.88, "val_nll": 0.1}, best)


def test_loss_scale_guard_names_the_weight_to_change():
    weights = {"kd": (0.9, "losses[0].weight"), "hint": (1.0, "losses[1].weight")}
    notes = term_scales({"kd": 2.0, "hint": 500.0}, weights, steps=10)
    assert len(notes) == 1 and "`hint` is 278× larger than `kd`" in notes[0]
    assert "lower losses[1].weight or raise losses[0].weight" in notes[0]
    assert term_scales({"kd": 2.0, "hint": 50.0}, weights, steps=10) == []
    assert term_scales({"kd": 2.0, "ce": 900.0}, {"kd": (1.0, "kd.ratio"), "ce": (0.0, "-kd.ratio")}, 10) == []
    (note,) = term_scales({"kd": 0.004, "ce": 1.2}, KD(temperature=1.0, ratio=0.5).term_weights(0.0), 1)
    assert note.endswith("; raise kd.ratio to bring them within 100×.")  # one advice, not "lower … or raise …"


def _report(teacher: float, baseline: float, distilled: float, **extra):
    models = {k: {"accuracy": v} for k, v in (("teacher", teacher), ("baseline", baseline),
                                             ("distilled", distilled))}
    return {"models": models, "dataset": {"unlabeled": 0}, **extra}


def test_doctor_says_a_loss_first_and_names_the_one_hot_teacher():
    report = _report(0.98, 0.93, 0.92, teacher_signal={"train_confidence": 0.995, "train_entropy": 0.02,
                                                        "val_entropy": 0.09},
                     recipe={"recipe": "soft_targets", "distilled_epochs": 10, "distilled_best_epoch": 4})
    d = diagnose(report)
    assert d["won"] is False and d["verdict"].startswith("Distillation did NOT beat the plain student")
    assert any("near one-hot" in c and "99.5%" in c for c in d["causes"])
    assert any("function_matching" in r for r in d["try"])


def test_doctor_names_a_weak_teacher_and_late_improvement_and_stays_quiet_on_a_win():
    d = diagnose(_report(0.90, 0.91, 0.89, recipe={"distilled_epochs": 10, "distilled_best_epoch": 9}))
    assert any("no more accurate than the plain student" in c for c in d["causes"])
    assert any("still improving at its last epoch" in c for c in d["causes"])
    win = diagnose(_report(0.95, 0.91, 0.94))
    assert win["won"] and win["causes"] == [] and "beats the plain one" in win["verdict"]


def test_plain_training_on_unlabelled_rows_is_a_clear_error():
    from distill.api import train

    x, y = _blobs(20, 1)
    y[3] = UNLABELED
    with pytest.raises(DataError, match="unlabelled .* only a teacher can teach from them"):
        train(nn.Linear(6, 3), ArrayDataset(x, y), num_classes=3, epochs=1, quiet=True)


@pytest.mark.parametrize(("modality", "shape", "reason"), [
    ("audio", (1, 40, 101), "spectrograms"), ("text", (2, 16), "token inputs"), ("features", (6,), "feature rows")])
def test_auto_keeps_soft_targets_where_shifts_and_mixup_do_not_apply(modality, shape, reason):
    r = resolve("auto", "auto", AugmentConfig(), modality, shape)
    assert (r.recipe, r.signal, r.augment.enabled) == ("soft_targets", "cached", False)
    assert reason in r.why
    with pytest.raises(ConfigError, match="token ids"):
        resolve("function_matching", "live", AugmentConfig(), "text", (2, 16))


def test_the_modality_of_built_in_and_array_data():
    from distill.data.tables import from_arrays

    assert load_data(load_config(None, DIGITS).data).modality == "images"
    assert from_arrays(np.random.rand(40, 5), np.arange(40) % 2).modality == "features"


def test_kd_tune_chooses_temperature_and_ratio_on_validation_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import json

    from distill.recipes.classify.pipeline import run

    args = [*DIGITS, "data.limit=200", "recipe=soft_targets", "kd.tune={trials: 3, epochs: 0.5}", "train.epochs=2",
            "teacher.train.epochs=1", "student.kwargs={hidden: [16]}", "bench.repeats=3", "bench.throughput_batch=8",
            f"output_dir={tmp_path}", f"teacher.cache_dir={tmp_path / 'cache'}", "quiet=true", "device=cpu"]
    run_dir = run(load_config(None, args))
    sweep = json.loads((run_dir / "distilled" / "kd_tune.json").read_text())
    assert len(sweep["trials"]) == 3 and sweep["proxy_epochs"] == 1
    assert all(1 <= t["temperature"] <= 8 and 0 <= t["ratio"] <= 1 for t in sweep["trials"])
    report = json.loads((run_dir / "report.json").read_text())
    best = max(sweep["trials"], key=lambda t: t["score"])
    assert f"temperature={best['temperature']:.3g}" in report["recipe"]["objective"]
    from distill.losses.config import KDTune
    from distill.recipes.classify.tune import tune_kd

    def must_not_train():
        raise AssertionError("a finished sweep is read back, not trained again")

    again = tune_kd(KDTune(trials=3, epochs=0.5), must_not_train, None, None, config=TrainConfig(epochs=2),
                    num_classes=10, teacher=None, stage_dir=run_dir / "distilled")
    assert (again.terms[0].temperature, again.terms[0].weight) == (best["temperature"], best["ratio"])
    with pytest.raises(ConfigError, match="kd.tune chooses the temperature and ratio"):
        load_config(None, [*DIGITS, "kd.tune={trials: 3}", "kd.ratio=0.5"])
    with pytest.raises(ConfigError, match="kd.tune tunes the soft-target KD"):
        load_config(None, [*DIGITS, "kd.tune={trials: 3}", "recipe=function_matching"])


def test_unlabeled_datasets_of_any_item_form_become_unlabelled_examples():
    from distill.data.transfer import as_unlabeled, with_transfer_set

    x = torch.randn(6, 4)
    for given in (x, [x[i] for i in range(6)], [(x[i], 1) for i in range(6)], [{"inputs": x[i]} for i in range(6)]):
        u = as_unlabeled(given)
        assert len(u) == 6 and u[2]["labels"] == UNLABELED and torch.equal(torch.as_tensor(u[2]["inputs"]), x[2])
    union = with_transfer_set([(x[i], i % 2) for i in range(3)], as_unlabeled([x[i] for i in range(6)]))
    assert len(union) == 9 and union[1]["labels"] == 1 and union[4]["labels"] == UNLABELED
    assert torch.equal(union[4]["inputs"], x[1]) and union[4]["index"] == 4


def test_the_loss_scale_guard_warns_once_even_when_epochs_are_shorter_than_its_window():
    import warnings

    from distill.losses.methods import Method

    torch.manual_seed(0)
    x, y = _blobs(48, 2)
    teacher, student = nn.Sequential(nn.Linear(6, 3)), nn.Sequential(nn.Linear(6, 3))
    method = Method([{"kind": "kd", "weight": 1.0}, {"kind": "hint", "weight": 1e6}])  # logits vs logits, MSE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distill(teacher, student, ArrayDataset(x, y), loss=method, epochs=3, batch_size=16, quiet=True)
    notes = [str(w.message) for w in caught if "loss scale" in str(w.message)]
    assert len(notes) == 1 and "`hint` is" in notes[0] and "over the first 3 steps" in notes[0]


def test_distill_without_a_loss_uses_function_matching_on_images_its_teacher_is_sure_of():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        teacher[1].weight.mul_(100)  # near one-hot on these images
    result = distill(teacher, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ArrayDataset(x, y), epochs=1,
                     batch_size=16, quiet=True)
    row = result.history[0]
    assert "train_kd" in row and "train_ce" not in row  # pure KD (alpha 1), on shifted, mixed views
    with torch.no_grad():
        teacher[1].weight.mul_(1e-4)  # unsure: its soft targets teach as they are
    soft = distill(teacher, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ArrayDataset(x, y), epochs=1,
                   batch_size=16, quiet=True)
    assert {"train_kd", "train_ce"} <= set(soft.history[0])  # soft targets, alpha 0.5
    flat = distill(teacher, nn.Linear(64, 10), ArrayDataset(x.flatten(1), y), epochs=1, batch_size=16, quiet=True)
    assert {"train_kd", "train_ce"} <= set(flat.history[0])  # feature rows: soft targets, alpha 0.5


def test_the_lm_doctor_names_pure_kd_an_unadapted_teacher_and_a_cold_reverse_kl():
    models = {"teacher": {"ppl": 35.0}, "baseline": {"ppl": 94.0}, "distilled": {"ppl": 115.0}}
    lost = diagnose_lm({"models": models, "loss": {"kind": "reverse_kl", "ratio": 1.0, "warm_start": 0},
                        "teacher_adapt": None})
    assert not lost["won"] and lost["verdict"].startswith("Distillation did NOT beat")
    assert [r.split(" ")[1] for r in lost["try"]] == ["teacher.adapt:", "kd.ratio:", "kd.warm_start"]
    won = diagnose_lm({"models": {**models, "teacher_adapted": {"ppl": 15.0}, "distilled": {"ppl": 79.0}},
                       "loss": {"kind": "forward_kl", "ratio": 0.5}, "teacher_adapt": {"steps": 60}})
    assert won["won"] and "79.00 vs 94.00 (teacher 15.00)" in won["verdict"] and won["causes"] == []


@pytest.mark.parametrize(("confidence", "transfer_set", "expected"), [
    (0.99, False, "function_matching"),  # near one-hot on its training images: only new views teach
    (0.93, False, "soft_targets"),  # soft targets already carry dark knowledge (fmnist_full)
    (0.93, True, "function_matching"),  # a transfer set: new inputs are there to be shifted and mixed
])
def test_auto_on_images_follows_the_teachers_confidence_on_its_training_images(confidence, transfer_set, expected):
    calls = []
    r = resolve("auto", "auto", AugmentConfig(), "images", (1, 8, 8), transfer_set=transfer_set,
                confidence=lambda: calls.append(1) or confidence)
    assert r.recipe == expected
    assert (r.signal, r.augment.mixup > 0) == (("live", True) if expected == "function_matching" else ("cached", False))
    assert (f"{100 * confidence:.1f}%" if not transfer_set else "transfer set") in r.why
    assert len(calls) == (0 if transfer_set else 1)  # measured only when the choice needs it


def test_a_run_measures_its_teachers_confidence_to_choose_the_recipe():
    cfg = load_config(None, DIGITS)
    data = load_data(cfg.data)
    torch.manual_seed(0)
    unsure = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # untrained: near-uniform outputs
    with torch.no_grad():
        unsure[1].weight.mul_(0.01)
    assert plan_of(cfg, data, unsure).recipe == "soft_targets"
    assert plan_of(cfg, data).recipe == "function_matching"  # before the teacher exists: provisional
    explicit = load_config(None, [*DIGITS, "recipe=function_matching"])
    assert plan_of(explicit, data, unsure).recipe == "function_matching"  # a choice in the config stands
