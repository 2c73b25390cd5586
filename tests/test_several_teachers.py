"""Several teachers in a run config (`teacher.members`), and multi-stage runs as two configs."""

from __future__ import annotations

import json

import pytest
import torch

from distill.core.checkpoint import save_weights
from distill.core.errors import ConfigError
from distill.data.datasets import load_data
from distill.losses.methods import CE
from distill.models.config import ModelConfig
from distill.models.ensemble import Ensemble
from distill.models.zoo import build_model
from distill.recipes.classify.config import load_config
from distill.recipes.classify.pipeline import run
from distill.teachers.signals import LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

SMALL = ["data.name=digits", "data.label_fraction=1", "train.epochs=1", "bench.repeats=3", "bench.throughput_batch=8", "quiet=true"]
CNN = {"arch": "cnn", "kwargs": {"widths": [8], "convs": 1, "fc": 16}}
MLP = {"arch": "mlp", "kwargs": {"hidden": [32]}}


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[dict]:
    """Two trained teachers of different architectures on digits, saved as checkpoints."""
    root = tmp_path_factory.mktemp("members")
    data = load_data(load_config(None, SMALL).data)
    specs = []
    for i, spec in enumerate([CNN, MLP]):
        model = build_model(ModelConfig(**spec), data.input_shape, data.num_classes, seed=i)
        fit(model, data.train, objective=CE(), config=TrainConfig(epochs=1, batch_size=64), num_classes=10,
            quiet=True)
        save_weights(root / f"m{i}.safetensors", model)
        specs.append({**spec, "checkpoint": str(root / f"m{i}.safetensors")})
    return specs


def _members_override(specs: list[dict]) -> str:
    return "teacher.members=" + json.dumps(specs)


def test_a_run_distils_an_ensemble_of_different_architectures(tmp_path, members):
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path}", "teacher.arch=null", "teacher.kwargs={}",
                             _members_override(members), "teacher.combine=confidence", "baseline=false",
                             f"teacher.cache_dir={tmp_path / 'cache'}"])
    report = json.loads((run(cfg) / "report.json").read_text())
    assert report["models"]["teacher"]["params"] > 0 and report["models"]["distilled"]["accuracy"] > 0.1


@pytest.mark.parametrize("overrides, message", [
    (["teacher.combine=correctness", "teacher.signal=cached"], "correctness weighs members by the labels"),
    (["teacher.arch=cnn"], "either `arch` \\(one model\\) or `members`"),
    (["teacher.weights=[1, 2]"], "weights are used only with combine: weighted"),
])
def test_ensemble_configs_are_checked_before_any_compute(members, overrides, message):
    base = [*SMALL, "teacher.arch=null", _members_override(members)]
    with pytest.raises(ConfigError, match=message):
        load_config(None, base + overrides)


def test_a_missing_member_checkpoint_is_named(members, tmp_path):
    specs = [members[0], {**members[1], "checkpoint": str(tmp_path / "nope.safetensors")}]
    with pytest.raises(ConfigError, match=r"`teacher.members\[1\].checkpoint`: .*nope.safetensors does not exist"):
        load_config(None, [*SMALL, "teacher.arch=null", _members_override(specs)])


def test_a_live_teacher_gives_the_batch_labels_to_a_correctness_ensemble():
    torch.manual_seed(0)
    right, wrong = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    y = right(x).argmax(1)
    with torch.no_grad():
        wrong.weight.copy_(-right.weight)
        wrong.bias.copy_(-right.bias)
    teacher = LiveTeacher(Ensemble([right, wrong], mode="correctness"))
    with_labels = teacher.signal({"inputs": x, "index": torch.arange(5), "labels": y}).logits
    assert torch.equal(with_labels.argmax(1), y)  # the member right about each example dominates
    assert not torch.allclose(with_labels, teacher.signal({"inputs": x, "index": torch.arange(5)}).logits)


def test_teacher_assistant_student_is_two_runs(tmp_path):
    """Multi-stage (teacher → assistant → student): the second run's teacher is the first run's student."""
    first = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=assistant", "baseline=false",
                               "teacher.train.epochs=1", f"student.arch={CNN['arch']}",
                               "student.kwargs=" + json.dumps(CNN["kwargs"]), f"teacher.cache_dir={tmp_path / 'c'}"])
    assistant = run(first)
    second = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=student", "baseline=false",
                                f"teacher.arch={CNN['arch']}", "teacher.kwargs=" + json.dumps(CNN["kwargs"]),
                                f"teacher.checkpoint={assistant / 'distilled' / 'model.safetensors'}",
                                f"teacher.cache_dir={tmp_path / 'c'}"])
    reports = [json.loads((d / "report.json").read_text()) for d in (assistant, run(second))]
    assert reports[1]["models"]["teacher"]["accuracy"] == reports[0]["models"]["distilled"]["accuracy"]
