"""The training loop: it learns, resumes exactly, stops on divergence, keeps the best model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distill.core.checkpoint import load_weights, read_metadata
from distill.core.errors import CheckpointError, ConfigError, ModelError, TrainingDiverged
from distill.data.arrays import ArrayDataset
from distill.losses.methods import CE, KD
from distill.models.config import ModelConfig
from distill.models.zoo import build_model
from distill.teachers.signals import LiveTeacher
from distill.training.classify import ClassifierTask, fit
from distill.training.config import TrainConfig
from distill.training.optim import make_optimizer, make_scheduler


def _student(digits, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    spec = ModelConfig(arch="mlp", kwargs={"hidden": [16], "dropout": dropout})
    return build_model(spec, digits.input_shape, digits.num_classes, seed=seed)


def _config(**overrides) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.01}}
    return TrainConfig.model_validate({**base, **overrides})


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_beats_chance_on_digits(digits):
    result = fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=4),
                 num_classes=10, val_data=digits.val, quiet=True)
    assert len(result.history) == 4
    assert result.history[-1]["val_accuracy"] > 0.6  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"epoch", "train_loss", "train_ce", "val_accuracy", "val_nll"} <= set(result.history[0])
    assert not result.model.training


def test_distillation_from_a_live_teacher_logs_both_terms(digits):
    teacher = _student(digits, seed=5)
    result = fit(_student(digits), digits.train, objective=KD(temperature=2.0, ratio=0.5),
                 config=_config(epochs=1, augment={"shift": 1}), num_classes=10,
                 teacher=LiveTeacher(teacher), quiet=True)
    row = result.history[0]
    assert row["train_loss"] == pytest.approx(0.5 * row["train_kd"] + 0.5 * row["train_ce"], rel=1e-5)


def test_same_seed_gives_identical_runs(digits):
    runs = [fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=2, augment={"shift": 1}),
                num_classes=10, val_data=digits.val, quiet=True) for _ in range(2)]
    assert runs[0].history == runs[1].history


class _Interrupt(Exception):
    pass


def _crash_in_third_epoch(monkeypatch, train) -> None:
    """Run `train()` with training interrupted as the third epoch starts (its checkpoint: epoch 2)."""
    real_epoch = ClassifierTask.begin_epoch

    def crash(self, epoch):
        if epoch == 2:
            raise _Interrupt
        return real_epoch(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(ClassifierTask, "begin_epoch", crash)
        with pytest.raises(_Interrupt):
            train()


def test_resume_continues_bit_for_bit(digits, tmp_path: Path, monkeypatch):
    cfg = _config(epochs=4, augment={"shift": 1}, warmup_epochs=1)
    full = fit(_student(digits, dropout=0.2), digits.train, objective=CE(), config=cfg, num_classes=10,
               val_data=digits.val, checkpoint_dir=tmp_path / "full", quiet=True)

    _crash_in_third_epoch(monkeypatch, lambda: fit(
        _student(digits, dropout=0.2), digits.train, objective=CE(), config=cfg, num_classes=10,
        val_data=digits.val, checkpoint_dir=tmp_path / "split", quiet=True))
    steps_per_epoch = -(-len(digits.train) // cfg.batch_size)
    assert read_metadata(tmp_path / "split" / "last.safetensors")["state"]["step"] == 2 * steps_per_epoch

    torch.manual_seed(12345)  # the resumed process starts from another global RNG state
    resumed = fit(_student(digits, seed=99, dropout=0.2), digits.train, objective=CE(), config=cfg,
                  num_classes=10, val_data=digits.val, checkpoint_dir=tmp_path / "split", resume=True,
                  quiet=True)

    assert resumed.history == full.history  # exact float equality, all four epochs
    assert resumed.best_epoch == full.best_epoch
    full_w, resumed_w = _weights(full.model), _weights(resumed.model)
    assert full_w.keys() == resumed_w.keys()
    for k in full_w:
        assert torch.equal(full_w[k], resumed_w[k]), k
    metrics = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("split", "full")]
    assert metrics[0] == metrics[1]


def test_resume_of_a_finished_run_trains_nothing(digits, tmp_path: Path, monkeypatch):
    cfg = _config(epochs=2)
    first = fit(_student(digits), digits.train, objective=CE(), config=cfg, num_classes=10,
                val_data=digits.val, checkpoint_dir=tmp_path, quiet=True)
    monkeypatch.setattr(ClassifierTask, "begin_epoch", lambda *a: pytest.fail("trained again"))
    again = fit(_student(digits, seed=3), digits.train, objective=CE(), config=cfg, num_classes=10,
                val_data=digits.val, checkpoint_dir=tmp_path, resume=True, quiet=True)
    assert again.history == first.history


def test_resume_with_different_settings_is_refused(digits, tmp_path: Path):
    fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=10,
        checkpoint_dir=tmp_path, quiet=True)
    with pytest.raises(CheckpointError, match="different training settings"):
        fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1, optimizer={"lr": 0.5}),
            num_classes=10, checkpoint_dir=tmp_path, resume=True, quiet=True)
    # a larger budget is not a different setting: the run continues, its schedule stretched to the new end
    longer = fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=2), num_classes=10,
                 checkpoint_dir=tmp_path, resume=True, quiet=True)
    assert [r["epoch"] for r in longer.history] == [1, 2]
    with pytest.raises(CheckpointError, match="different training settings"):
        fit(_student(digits), digits.train, objective=KD(), config=_config(epochs=1), num_classes=10,
            teacher=LiveTeacher(_student(digits, seed=1)), checkpoint_dir=tmp_path, resume=True, quiet=True)


def test_nan_inputs_stop_training_and_keep_the_last_good_checkpoint(digits, tmp_path: Path):
    fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=10,
        checkpoint_dir=tmp_path, quiet=True)
    good = (tmp_path / "last.safetensors").read_bytes()
    best = (tmp_path / "best.safetensors").read_bytes()

    inputs = digits.train.inputs.clone()
    inputs[:] = float("nan")
    with pytest.raises(TrainingDiverged) as exc:
        fit(_student(digits), ArrayDataset(inputs, digits.train.labels), objective=CE(),
            config=_config(epochs=1), num_classes=10, checkpoint_dir=tmp_path, quiet=True)
    assert "at step 0 (epoch 1)" in str(exc.value)
    assert "train.optimizer.lr" in str(exc.value)
    assert (tmp_path / "last.safetensors").read_bytes() == good
    assert (tmp_path / "best.safetensors").read_bytes() == best


def test_huge_learning_rate_diverges_after_the_first_step(digits):
    with pytest.raises(TrainingDiverged, match=r"at step [1-9]\d* "):
        fit(_student(digits), digits.train, objective=CE(),
            config=_config(epochs=2, scheduler="none", optimizer={"name": "sgd", "lr": 1e30}),
            num_classes=10, quiet=True)


def test_teacher_and_student_class_counts_must_match(digits):
    five_way = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [8]}), digits.input_shape, 5, seed=0)
    with pytest.raises(ModelError) as exc:
        fit(_student(digits), digits.train, objective=KD(), config=_config(epochs=1), num_classes=10,
            teacher=LiveTeacher(five_way), quiet=True)
    assert "teacher outputs 5 classes but the student outputs 10" in str(exc.value)


def test_student_must_predict_the_datas_classes(digits):
    with pytest.raises(ModelError, match="outputs 10 classes but the data has 12"):
        fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=12, quiet=True)


def test_kd_without_a_teacher_is_refused(digits):
    with pytest.raises(ModelError, match="needs a teacher"):
        fit(_student(digits), digits.train, objective=KD(), config=_config(epochs=1), num_classes=10, quiet=True)


def test_early_stopping_when_validation_stops_improving(digits):
    result = fit(_student(digits), digits.train, objective=CE(),
                 config=_config(epochs=6, early_stopping_patience=1, optimizer={"lr": 1e-12}),
                 num_classes=10, val_data=digits.val, quiet=True)
    assert result.stopped_early
    assert len(result.history) == 2 and result.best_epoch == 1  # tied rows: the later one is kept (`kept_row`)
    assert result.history[1]["val_accuracy"] == result.history[0]["val_accuracy"]


def test_resuming_an_early_stopped_run_trains_no_further(digits, tmp_path: Path, monkeypatch):
    cfg = _config(epochs=6, early_stopping_patience=1, optimizer={"lr": 1e-12})
    first = fit(_student(digits), digits.train, objective=CE(), config=cfg, num_classes=10,
                val_data=digits.val, checkpoint_dir=tmp_path, quiet=True)
    assert first.stopped_early and len(first.history) == 2
    monkeypatch.setattr(ClassifierTask, "begin_epoch", lambda *a: pytest.fail("trained after early stopping"))
    again = fit(_student(digits), digits.train, objective=CE(), config=cfg, num_classes=10,
                val_data=digits.val, checkpoint_dir=tmp_path, resume=True, quiet=True)
    assert again.stopped_early and again.history == first.history


def test_progress_bar_raises_no_warnings(digits, recwarn):
    fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=10, quiet=False)
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []


def test_the_progress_bar_shows_the_running_loss_between_metrics_rows(digits, capfd, monkeypatch):
    import itertools

    import distill.training.engine as engine

    clock = itertools.count(0.0, 2.0)  # every step "takes" 2 s: the running loss is shown after each
    monkeypatch.setattr(engine.time, "monotonic", lambda: next(clock))
    fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=10, quiet=False)
    refreshes = capfd.readouterr().err.split("\r")
    # before the epoch's metrics row the bar already showed the loss so far (no validation figure yet)
    assert any("train_loss=" in r and "val_accuracy" not in r for r in refreshes)


def test_the_best_epoch_is_what_is_returned(digits, tmp_path: Path):
    # Validate on wrong labels: learning the real ones makes "val accuracy" fall, so an early
    # epoch stays best and the last epoch's weights differ from the returned ones.
    wrong_val = ArrayDataset(digits.val.inputs, (digits.val.labels + 1) % 10)
    result = fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=3), num_classes=10,
                 val_data=wrong_val, checkpoint_dir=tmp_path, quiet=True)
    accs = [r["val_accuracy"] for r in result.history]
    assert result.best_epoch == accs.index(max(accs)) < 2
    assert read_metadata(tmp_path / "best.safetensors") == {"epoch": result.best_epoch}

    best = _student(digits, seed=7)
    load_weights(tmp_path / "best.safetensors", best)
    last = _student(digits, seed=7)
    load_weights(tmp_path / "last.safetensors", last)
    returned = _weights(result.model)
    assert all(torch.equal(returned[k], v) for k, v in best.state_dict().items())
    assert not all(torch.equal(returned[k], v) for k, v in last.state_dict().items())


def test_the_best_epoch_is_returned_without_a_checkpoint_directory(digits, monkeypatch):
    wrong_val = ArrayDataset(digits.val.inputs, (digits.val.labels + 1) % 10)  # as above: early epochs win
    snapshots = []
    real_validate = ClassifierTask.validate

    def validate_and_snapshot(self):
        snapshots.append(_weights(self.acc.unwrap_model(self.model)))
        return real_validate(self)

    monkeypatch.setattr(ClassifierTask, "validate", validate_and_snapshot)
    result = fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=3), num_classes=10,
                 val_data=wrong_val, quiet=True)
    assert result.best_epoch < 2
    returned = _weights(result.model)
    assert all(torch.equal(returned[k], v) for k, v in snapshots[result.best_epoch].items())
    assert not all(torch.equal(returned[k], v) for k, v in snapshots[-1].items())


def test_cosine_schedule_with_warmup():
    model = nn.Linear(2, 2)
    cfg = _config(epochs=2, warmup_epochs=0.5)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=4)  # 8 steps, 2 of warm-up
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.005, 0.01])
    assert lrs[2] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[5] == pytest.approx(0.005)  # halfway through the cosine part


def test_tensorboard_tracking_writes_event_files_beside_the_checkpoints(digits, tmp_path):
    pytest.importorskip("tensorboard")
    model = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [8]}), digits.input_shape, 10, seed=0)
    fit(model, digits.train, objective=CE(), config=TrainConfig(epochs=2, batch_size=64), num_classes=10,
        val_data=digits.val, checkpoint_dir=tmp_path / "student", quiet=True, device="cpu",
        tracking=["tensorboard"], name="student")
    events = list((tmp_path / "tracking" / "student").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


@pytest.mark.parametrize("var, engine", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_engines_are_refused_before_training(digits, tmp_path: Path, monkeypatch, var, engine):
    monkeypatch.setenv(var, "true")  # what `accelerate launch --use_fsdp / --use_deepspeed` sets
    with pytest.raises(ConfigError, match=f"selected {engine}.*Use data parallelism \\(DDP\\)"):
        fit(_student(digits), digits.train, objective=CE(), config=_config(epochs=1), num_classes=10,
            checkpoint_dir=tmp_path / "ckpt", quiet=True)
    assert not (tmp_path / "ckpt").exists()  # nothing written


def test_normalized_loss_divides_each_term_by_its_mean_before_weighting():
    from distill.training.classify import normalized_loss

    parts = {"loss": torch.tensor(0.0), "kd": torch.tensor(0.02), "ce": torch.tensor(3.0)}
    weights = KD(temperature=1.0, ratio=0.5).term_weights(0.0)
    assert float(normalized_loss(parts, weights, {"kd": 1 / 0.01, "ce": 1 / 1.5})) == pytest.approx(0.5 * 2 + 0.5 * 2)


def test_normalized_terms_are_recorded_once_and_kept_on_resume(digits, tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    teacher = LiveTeacher(_student(digits, seed=5).eval())
    cfg = _config(epochs=3, normalize_terms=True)

    def run(directory: str, resume: bool = False):
        return fit(_student(digits), digits.train, objective=KD(temperature=1.0, ratio=0.5), config=cfg,
                   num_classes=10, teacher=teacher, val_data=digits.val, checkpoint_dir=tmp_path / directory,
                   resume=resume, quiet=True)

    full = run("full")
    # the guard reads the first epoch (10 steps): shorter than its 20
    assert len(full.notes) == 1 and full.notes[0].startswith("terms normalised after 10 steps")
    scale = read_metadata(tmp_path / "full" / "last.safetensors")["state"]["term_scale"]
    assert set(scale) == {"kd", "ce"} and all(v > 0 for v in scale.values())
    _crash_in_third_epoch(monkeypatch, lambda: run("split"))
    resumed = run("split", resume=True)
    assert resumed.history == full.history  # the resumed epoch used the divisors of the first
    plain = fit(_student(digits), digits.train, objective=KD(temperature=1.0, ratio=0.5), config=_config(epochs=3),
                num_classes=10, teacher=teacher, val_data=digits.val, quiet=True)
    assert plain.history[-1]["train_loss"] != full.history[-1]["train_loss"]  # the option changes training
