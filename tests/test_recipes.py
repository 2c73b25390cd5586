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
from distill.losses.config import KDConfig
from distill.losses.terms import cross_entropy, term_scales
from distill.recipes.classify.choice import plan_of
from distill.recipes.classify.config import load_config
from distill.recipes.classify.pilot import MIN_RUNG_STEPS, affordable, dropped_units, pilot_budget, run_pilot
from distill.recipes.classify.plan import Candidate, candidates, chosen, shift_for
from distill.recipes.classify.students import baseline_budget
from distill.training.classify import kept_row
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


@pytest.mark.parametrize(("shape", "shift"), [((1, 8, 8), 1), ((1, 28, 28), 2), ((3, 56, 64), 4), ((30,), 0)])
def test_function_matching_shifts_are_a_fraction_of_the_image_side(shape, shift):
    assert shift_for(shape) == shift
    cands = candidates("images" if len(shape) == 3 else "features", shape, kd=KDConfig(), augment=AugmentConfig())
    fm = [c for c in cands if c.recipe == "function_matching"]
    assert {(c.augment.shift, c.augment.mixup) for c in fm} == {(shift, 1.0), (shift, 0.2)}  # mixup is a candidate
    assert all(c.signal == "live" and c.objective.terms[0].temperature == 1.0 for c in fm)


def test_explicit_augmentation_and_kd_settings_are_used_as_given_in_every_candidate():
    cands = candidates("images", (1, 8, 8), kd=KDConfig(temperature=3.0),
                       augment=AugmentConfig(shift=0, mixup=0.0))
    assert all((c.augment.shift, c.augment.mixup) == (0, 0.0) for c in cands)  # 0 is off, not "the default"
    assert {c.objective.terms[0].temperature for c in cands if c.recipe != "plain"} == {3.0}
    fm = chosen("function_matching", "auto", AugmentConfig(shift=0), "images", (1, 8, 8))
    assert (fm.augment.shift, fm.augment.mixup) == (0, 1.0)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["recipe=soft_targets"], ("soft_targets", "cached", 2.0, 0.5)),
    (["recipe=soft_targets", "kd.ratio=0.9", "train.augment.shift=1"], ("soft_targets", "live", 2.0, 0.9)),
    (["pilot.share=0"], ("soft_targets", "cached", 2.0, 0.5)),  # auto without a pilot: the conservative recipe
    (["recipe=function_matching"], ("function_matching", "live", 1.0, 1.0)),
])
def test_a_recipe_named_in_the_config_is_used_without_a_pilot(overrides, expected):
    cfg = load_config(None, [*DIGITS, *overrides])
    r = plan_of(cfg, load_data(cfg.data))
    assert (r.recipe, r.signal, r.objective.terms[0].temperature, r.objective.terms[0].weight) == expected
    assert r.pilot is None


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


def test_unlabelled_texts_with_line_breaks_come_from_jsonl_rows(tmp_path):
    from distill.data.unlabeled import read_raw

    (tmp_path / "pool.jsonl").write_text('{"text": "first line\\nsecond line"}\n\n{"text": "another"}\n')
    assert read_raw(tmp_path / "pool.jsonl", "data.unlabeled") == ["first line\nsecond line", "another"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: each row needs a string `text`.*\['body'\]"):
        read_raw(tmp_path / "bad.jsonl", "data.unlabeled")


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


def test_the_kept_row_is_the_latest_within_the_validation_splits_noise_of_the_best():
    acc = [0.70, 0.82, 0.80, 0.81, 0.79]  # the peak at row 1, then within noise
    rows = [{"val_accuracy": a, "val_nll": 1.0} for a in acc]
    assert kept_row(rows, n_val=28) == 4  # 28 examples: one standard error is 7 points, the last row is kept
    assert kept_row(rows, n_val=100_000) == 1  # a large split: the best row itself
    assert kept_row(rows + [{"val_accuracy": 0.60, "val_nll": 2.0}], n_val=28) == 4  # a real fall is not kept
    assert kept_row([{"train_loss": 2.0}, {"train_loss": 1.0}, {"train_loss": 1.5}], n_val=0) == 1  # no validation


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
                     recipe={"recipe": "soft_targets", "distilled_steps": 100,
                             "distilled_best": {"row": 4, "rows": 10, "step": 50}})
    d = diagnose(report)
    assert d["won"] is False and d["verdict"].startswith("Distillation did NOT beat the plain student")
    assert any("near one-hot" in c and "99.5%" in c for c in d["causes"])
    assert any("function_matching" in r for r in d["try"])


def test_doctor_names_a_weak_teacher_and_late_improvement_and_stays_quiet_on_a_win():
    d = diagnose(_report(0.90, 0.91, 0.89, recipe={"distilled_steps": 100,
                                                   "distilled_best": {"row": 9, "rows": 10, "step": 100}}))
    assert any("no more accurate than the plain student" in c for c in d["causes"])
    assert any("still improving at its last validation" in c for c in d["causes"])
    win = diagnose(_report(0.95, 0.91, 0.94))
    assert win["won"] and win["causes"] == [] and "beats the plain one" in win["verdict"]


def test_doctor_claims_a_win_only_when_the_paired_test_supports_it():
    noise = {"outcome": "no detectable difference", "low": -0.8, "high": 2.6, "p_value": 0.31, "n": 1000}
    d = diagnose(_report(0.98, 0.900, 0.909, verdict=noise))
    assert not d["won"] and d["verdict"].startswith("No detectable difference") and "+0.90 points" in d["verdict"]
    assert any("within the test's noise" in c for c in d["causes"])
    worse = {"outcome": "worse", "low": -14.0, "high": -6.0, "p_value": 1e-6, "n": 500}
    d = diagnose(_report(0.98, 0.90, 0.80, verdict=worse))
    assert d["verdict"].startswith("Distillation did NOT beat")
    assert not any("within the test's noise" in c for c in d["causes"])


def test_plain_training_on_unlabelled_rows_is_a_clear_error():
    from distill.api import train

    x, y = _blobs(20, 1)
    y[3] = UNLABELED
    with pytest.raises(DataError, match="unlabelled .* only a teacher can teach from them"):
        train(nn.Linear(6, 3), ArrayDataset(x, y), num_classes=3, epochs=1, quiet=True)


@pytest.mark.parametrize(("modality", "shape", "fm_shift"), [
    ("audio", (1, 40, 101), 3), ("text", (2, 16), None), ("features", (6,), 0)])
def test_candidates_offer_function_matching_only_where_inputs_can_be_mixed(modality, shape, fm_shift):
    cands = candidates(modality, shape, kd=KDConfig(), augment=AugmentConfig())
    assert cands[0].name == "plain" and not cands[0].augment.enabled
    assert {(c.objective.terms[0].temperature, c.objective.terms[0].weight) for c in cands
            if c.recipe == "soft_targets"} == {(2.0, 0.5), (4.0, 0.9)}
    fm = [c for c in cands if c.recipe == "function_matching"]
    assert ({c.augment.shift for c in fm} == {fm_shift}) if fm_shift is not None else fm == []
    assert [c.recipe for c in candidates(modality, shape, kd=KDConfig(), augment=AugmentConfig(),
                                         live_ok=False)].count("function_matching") == 0  # a cached signal
    with pytest.raises(ConfigError, match="token ids"):
        chosen("function_matching", "live", AugmentConfig(), "text", (2, 16))


def _fake(names_recipes):
    return [Candidate(n, r, CE() if r == "plain" else KD(), AugmentConfig().filled()) for n, r in names_recipes]


def test_the_pilot_halves_by_score_and_picks_the_best_teacher_candidate_and_the_best_plain_one():
    cands = _fake([("plain", "plain"), ("st2", "soft_targets"), ("st4", "soft_targets"), ("fm1", "function_matching"),
                   ("fm02", "function_matching")])
    truth = {"plain": 0.80, "st2": 0.85, "st4": 0.90, "fm1": 0.60, "fm02": 0.88}
    trained = []

    def train(c, upto):
        trained.append((c.name, upto))
        return {"val_accuracy": truth[c.name] * min(1.0, upto / 30), "val_nll": 1.0}

    pilot = run_pilot(cands, train, first_rung=10, total=100)
    # rung 0: all five; the best two (st4, fm02) and each group's default (plain, st2) go on at 3× the steps
    assert trained[:5] == [(c.name, 10) for c in cands]
    assert trained[5:] == [("plain", 30), ("st2", 30), ("st4", 30), ("fm02", 30)]
    assert (pilot.winner, pilot.best_plain, pilot.plain_won) == ("st4", "plain", False)
    assert pilot.seconds == sum(r["seconds"] for r in pilot.rows if r["name"] not in ("st4", "plain"))
    # the dropped candidates' steps (one at 10, two at 30) are the cost: at most share / (1 - share) of the job
    assert dropped_units([1.0] * 5) == 1 + 3 * 2 and pilot_budget(1200, [1.0] * 5, 0.2) == int(0.25 * 1200 / 7)
    # candidates that run the teacher live cost more per step: the costliest are assumed dropped
    assert dropped_units([1, 1, 3, 3, 1]) == 3 + 3 * (3 + 1)
    # the one-standard-error rule: st4's 5 points over the default st2 are noise on 28 validation examples
    assert run_pilot(cands, train, first_rung=10, total=100, n_val=28).winner == "st2"
    assert run_pilot(cands, train, first_rung=10, total=100, n_val=5000).winner == "st4"
    again = run_pilot(cands, lambda c, s: pytest.fail("a recorded candidate is not trained again"), 10, 100,
                      done=pilot.rows)
    assert again.winner == "st4"
    truth["plain"] = 0.95  # plain training beats every candidate using the teacher: said, not hidden
    assert run_pilot(cands, train, first_rung=10, total=100).plain_won
    assert max(r["steps"] for r in run_pilot(cands, train, first_rung=10, total=20).rows) == 20  # never past the run


def test_a_next_rung_that_would_overrun_the_share_is_not_run():
    cands = _fake([("plain", "plain"), ("aug", "plain"), ("st2", "soft_targets"), ("st4", "soft_targets")])
    truth = {"plain": 0.5, "aug": 0.3, "st2": 0.6, "st4": 0.61}  # st4 ties the default st2: both go on
    costs = [1.0, 2.5, 1.0, 1.0]  # the augmented plain candidate takes 2.5 plain steps per step

    def train(c, upto):
        return {"val_accuracy": truth[c.name], "val_nll": 1.0}

    uncapped = run_pilot(cands, train, first_rung=100, total=10_000)
    assert max(r["rung"] for r in uncapped.rows) == 1  # plain, st2 and st4 go on to 300 steps
    # the worst case of that rung: aug's 100 steps × 2.5 and st4's 300, over an allowance of 350 plain steps
    capped = run_pilot(cands, train, first_rung=100, total=10_000, costs=costs, allowed=350, n_val=200)
    assert max(r["rung"] for r in capped.rows) == 0 and capped.winner == "st2" and capped.best_plain == "plain"
    assert max(r["rung"] for r in run_pilot(cands, train, 100, 10_000, costs=costs, allowed=550).rows) == 1
    assert dropped_units(sorted(costs, reverse=True)) == 2.5 + 1  # the first rung's budget assumed no next rung


def test_a_short_job_leaves_out_the_live_teacher_candidates_it_cannot_afford_never_a_default():
    cands = _fake([("plain", "plain"), ("st2", "soft_targets"), ("st4", "soft_targets"), ("fm1", "function_matching"),
                   ("fm02", "function_matching")])
    costs = [1.0, 1.0, 1.0, 12.0, 10.0]  # function matching runs the teacher live: 10-12× a plain step
    kept, kept_costs, skipped = affordable(cands, costs, 1000, 0.2)
    assert skipped == ["fm1"] and [c.name for c in kept] == ["plain", "st2", "st4", "fm02"]  # the dearest first
    assert kept_costs == [1.0, 1.0, 1.0, 10.0]
    assert pilot_budget(1000, kept_costs, 0.2) >= MIN_RUNG_STEPS  # what is left fits the share
    assert affordable(cands, costs, 100_000, 0.2)[2] == []  # a long job measures them all
    pair = _fake([("plain", "plain"), ("st", "soft_targets")])  # kd.temperature and ratio given, on text
    assert pilot_budget(1000, [1.0, 1.0], 0.2) == MIN_RUNG_STEPS and affordable(pair, [1.0, 1.0], 10, 0.2)[2] == []
    live_default = [1.0, 50.0, 1.0, 1.0, 1.0]  # the teacher group's default is measured whatever it costs
    assert "st2" not in affordable(cands, live_default, 1000, 0.2)[2]


def test_distill_without_a_loss_runs_a_pilot_and_says_what_it_chose():
    torch.manual_seed(0)
    x = torch.randn(240, 1, 8, 8)
    y = (x.flatten(1)[:, :10].argmax(1) % 4)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with torch.no_grad():
        teacher[1].weight.zero_()
        teacher[1].weight[torch.arange(10) % 4, torch.arange(10)] = 5.0  # a teacher close to the rule
    result = distill(teacher, nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), ArrayDataset(x[:200], y[:200]),
                     val_data=ArrayDataset(x[200:], y[200:]), steps=60, batch_size=32, quiet=True)
    plan = result.plan
    names = [r["name"] for r in plan["pilot"]["rows"] if r["rung"] == 0]
    skipped = plan["pilot"]["skipped"]  # a 60-step job cannot afford every candidate dearer than a plain step
    dear = ("function matching", "plain + shifts")  # a live teacher; augmentation dearer than this tiny student
    assert names[0] == "plain" and len(names) + len(skipped) == 6 and all(n.startswith(dear) for n in skipped)
    assert any(n.startswith("function matching") for n in names + skipped) and all(n in plan["why"] for n in skipped)
    assert plan["name"] == plan["pilot"]["winner"] and plan["recipe"] in ("soft_targets", "function_matching")
    assert plan["baseline"]["name"] == plan["pilot"]["best_plain"]
    assert result.history[-1]["step"] == 60 and result.seconds["pilot"] <= result.seconds["pilot_wall"]
    winner_rows = [r for r in result.history if r["step"] <= plan["pilot"]["rows"][0]["steps"]]
    assert winner_rows, "the winner's run continues its pilot steps (its first rows are the pilot's)"


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


def test_the_lm_doctor_names_pure_kd_an_unadapted_teacher_and_a_cold_reverse_kl():
    models = {"teacher": {"ppl": 35.0}, "baseline": {"ppl": 94.0}, "distilled": {"ppl": 115.0}}
    lost = diagnose_lm({"models": models, "loss": {"kind": "reverse_kl", "ratio": 1.0, "warm_start": 0},
                        "teacher_adapt": None})
    assert not lost["won"] and lost["verdict"].startswith("Distillation did NOT beat")
    assert [r.split(" ")[1] for r in lost["try"]] == ["teacher.adapt:", "kd.ratio:", "kd.warm_start"]
    won = diagnose_lm({"models": {**models, "teacher_adapted": {"ppl": 15.0}, "distilled": {"ppl": 79.0}},
                       "loss": {"kind": "forward_kl", "ratio": 0.5}, "teacher_adapt": {"steps": 60}})
    assert won["won"] and "79.00 vs 94.00 (teacher 15.00)" in won["verdict"] and won["causes"] == []


def test_a_run_pilots_its_candidates_records_them_and_writes_the_config_that_ran(tmp_path):
    import json

    import yaml

    from distill.recipes.classify.pipeline import run

    args = [*DIGITS, "data.limit=300", "train.steps=40", "train.batch_size=32", "teacher.train.epochs=2",
            "student.kwargs={hidden: [16]}", "bench.repeats=3", "bench.throughput_batch=8", f"output_dir={tmp_path}",
            "quiet=true", "device=cpu", "train.augment.flip=false"]
    run_dir = run(load_config(None, args))
    report = json.loads((run_dir / "report.json").read_text())
    rows = json.loads((run_dir / "pilot.json").read_text())["rows"]
    assert report["recipe"]["pilot"]["rows"] == rows and report["timing"]["pilot_share"] < 0.5
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert ran["recipe"] == report["recipe"]["recipe"] and ran["pilot"]["share"] == 0.0
    assert ran["train"]["augment"] == report["recipe"]["augment"] and ran["train"]["augment"]["flip"] is False
    assert yaml.safe_load((run_dir / "request.yaml").read_text())["recipe"] == "auto"
    assert "## Pilot" in (run_dir / "report.md").read_text()
    again = run(load_config(None, args), resume=True)  # compared with the request, not the resolved config
    assert json.loads((again / "pilot.json").read_text())["rows"] == rows
