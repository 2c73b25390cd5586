"""Bad input found by trying the product as a new user: each is refused clearly, before compute, and
leaves nothing that blocks the corrected command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import distill
from distill.core.checkpoint import save_weights
from distill.core.errors import CheckpointError, ConfigError, DataError, ModelError
from distill.data.arrays import ArrayDataset
from distill.recipes.classify.config import validate_config
from distill.recipes.classify.pipeline import run
from distill.training.classify import ClassifierTask, fit
from distill.training.config import TrainConfig


def test_a_wrong_layer_path_is_named_before_the_teacher_trains(run_config, monkeypatch):
    run_config["teacher"]["signal"] = "live"
    run_config["losses"] = [{"kind": "kd"}, {"kind": "hint", "student": "net.1", "teacher": "features.9"}]
    monkeypatch.setattr(ClassifierTask, "setup", lambda *a: pytest.fail("trained before the paths were checked"))
    with pytest.raises((ConfigError, ModelError), match="features.9"):
        run(validate_config(run_config))
    assert not (Path(run_config["output_dir"]) / "tiny").exists()


def test_a_bad_teacher_checkpoint_leaves_nothing_that_blocks_the_corrected_command(run_config, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_weights(wrong, nn.Linear(3, 2))  # another architecture
    run_config["teacher"]["checkpoint"] = str(wrong)
    with pytest.raises(CheckpointError, match="different architecture"):
        run(validate_config(run_config))
    run_dir = Path(run_config["output_dir"]) / "tiny"
    assert not run_dir.exists()
    run_dir.mkdir(parents=True)  # even a directory a crashed start left with its config only
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "tiny"}))
    del run_config["teacher"]["checkpoint"]
    assert (run(validate_config(run_config)) / "report.json").is_file()  # no --resume needed, nothing lost


def test_cache_rebuild_may_be_added_on_resume(run_config):
    first = run(validate_config(run_config))
    run_config["teacher"]["cache_rebuild"] = True
    assert run(validate_config(run_config), resume=True) == first


def test_an_unwritable_output_dir_is_named(run_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run_config["output_dir"] = str(blocker / "runs")
    with pytest.raises(ConfigError, match="output_dir: cannot write the run directory"):
        run(validate_config(run_config))


def _linear_pair(classes_teacher: int = 3, classes_student: int = 3) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Linear(4, classes_teacher), nn.Linear(4, classes_student)


@pytest.mark.parametrize(("inputs", "labels", "message"), [
    (torch.randn(0, 4), torch.zeros(0, dtype=torch.long), "train_data is empty"),
    (torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2.5, 0, 1]), "row 5 holds 2.5, which would be truncated"),
    (torch.randn(8, 4).index_put_((torch.tensor([6]), torch.tensor([1])), torch.tensor(float("nan"))),
     torch.zeros(8, dtype=torch.long), "row 6's inputs hold NaN or inf"),
])
def test_the_python_api_checks_what_the_cli_loaders_check(inputs, labels, message):
    teacher, student = _linear_pair()
    with pytest.raises(DataError, match=message):
        distill.distill(teacher, student, ArrayDataset(inputs, labels), loss=distill.KD(), steps=2, quiet=True)


def test_a_row_dataset_with_a_fractional_label_is_named_by_row():
    rows = [(torch.randn(4), 1), (torch.randn(4), 0.5)]
    with pytest.raises(DataError, match="row 1's label is 0.5"):
        distill.train(nn.Linear(4, 2), rows, steps=1, quiet=True)


@pytest.mark.parametrize(("teacher_out", "student_out", "blamed"), [(3, 5, "the student"), (5, 3, "the teacher")])
def test_a_class_count_mismatch_names_the_model_that_disagrees_with_the_labels(teacher_out, student_out, blamed):
    teacher, student = _linear_pair(teacher_out, student_out)
    data = ArrayDataset(torch.randn(9, 4), torch.tensor([0, 1, 2] * 3))
    with pytest.raises(ModelError, match=f"fix {blamed}'s number of outputs"):
        distill.distill(teacher, student, data, loss=distill.KD(), steps=2, quiet=True)


def test_a_corrupt_checkpoint_is_refused_and_resume_offers_the_intact_best(tmp_path, digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cfg = TrainConfig(epochs=2, batch_size=64, precision="no")
    fit(model, digits.train, objective=distill.CE(), config=cfg, num_classes=10, val_data=digits.val,
        checkpoint_dir=tmp_path, quiet=True, stop_at=3)
    last = tmp_path / "last.safetensors"
    data = bytearray(last.read_bytes())
    for i in range(len(data) - 400, len(data) - 300):  # 100 flipped bytes inside the tensors
        data[i] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupt.*best\.safetensors, are intact"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits.train, objective=distill.CE(), config=cfg,
            num_classes=10, val_data=digits.val, checkpoint_dir=tmp_path, resume=True, quiet=True)


def test_exporting_from_a_run_that_has_not_finished_is_refused(run_config, tmp_path):
    from distill.recipes.classify.tools import export_trained

    cfg = validate_config(run_config)
    run_dir = run(cfg)
    (run_dir / "report.json").unlink()  # as if the job had been stopped before its report
    cfg = validate_config({**run_config, "student": {**run_config["student"],
                                                     "checkpoint": str(run_dir / "distilled" / "model.safetensors")}})
    with pytest.raises(ConfigError, match="has not finished"):
        export_trained(cfg, "student", "safetensors", tmp_path / "out", check=False, int8=False)
    assert not (tmp_path / "out").exists()


def test_the_saved_config_is_what_ran_and_an_explicit_zero_stays_zero(run_config):
    run_config["teacher"]["signal"] = "auto"
    run_config["train"] = {"steps": 12, "batch_size": 32, "augment": {"shift": 0, "mixup": 0.0}}
    run_dir = run(validate_config(run_config))
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert (ran["train"]["augment"]["shift"], ran["train"]["augment"]["mixup"]) == (0, 0.0)
    assert report["recipe"]["augment"]["shift"] == 0 and report["recipe"]["augment"]["mixup"] == 0.0
    assert ran["recipe"] == report["recipe"]["recipe"]


def test_user_data_on_the_command_line_keeps_every_label(tmp_path):
    import numpy as np

    from distill.recipes.classify.config import load_config

    path = tmp_path / "data.npz"
    np.savez(path, inputs=np.random.rand(40, 1, 8, 8).astype("float32"), labels=np.arange(40) % 4)
    cfg = load_config(None, ["data.name=npz", f"data.path={path}"])
    assert cfg.data.label_fraction == 1.0  # the built-in job's 10% belongs to its own data
    assert load_config(None, ["data.label_fraction=0.5"]).data.label_fraction == 0.5


def test_a_resumed_run_may_extend_its_budget(run_config):
    run_config["train"] = {"steps": 12, "batch_size": 32}
    run_config["keep_state"] = True
    run_dir = run(validate_config(run_config))
    rows = lambda stage: [json.loads(x) for x in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows("distilled")[-1]["step"] == 12
    run_config["train"]["steps"] = 30
    run(validate_config(run_config), resume=True)
    assert rows("distilled")[-1]["step"] == 30 and rows("baseline")[-1]["step"] == 30
    report = json.loads((run_dir / "report.json").read_text())
    assert report["recipe"]["distilled_steps"] == 30
    run_config["train"]["batch_size"] = 16  # anything but the budget still has to match
    with pytest.raises(ConfigError, match="differs from the one saved"):
        run(validate_config(run_config), resume=True)


def test_a_finished_stage_without_training_state_says_it_cannot_be_extended(run_config):
    run_config["train"] = {"steps": 12, "batch_size": 32}
    run_dir = run(validate_config(run_config))
    run_config["train"]["steps"] = 30
    with pytest.warns(UserWarning, match="kept no training state .* cannot continue to 30 steps"):
        run(validate_config(run_config), resume=True)
    assert json.loads((run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 12
