"""Methods as config-declared weighted sums of terms, trained by `fit` on user models and zoo models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import AttnNet, DictNet
from torch import nn

from distill.core.checkpoint import load_weights
from distill.core.errors import ConfigError, ModelError
from distill.data.arrays import ArrayDataset
from distill.losses.methods import Method, Outputs
from distill.losses.terms import cross_entropy, soft_target_kl
from distill.models.zoo import freeze
from distill.recipes.classify.config import load_config
from distill.teachers.signals import CachedTeacher, LiveTeacher
from distill.training.classify import ClassifierTask, fit
from distill.training.config import TrainConfig


def _images(n: int = 48, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].mean((1, 2)) > 0).long() + (x[:, 0, 3:].mean((1, 2)) > 0).long()  # 3 classes
    return ArrayDataset(x, y)


def _teacher(width: int = 8) -> nn.Module:
    torch.manual_seed(1)
    return freeze(DictNet(width))


def _fit(student: nn.Module, method: Method, teacher: nn.Module, epochs: int = 3, **kw) -> object:
    cfg = TrainConfig(epochs=epochs, batch_size=16, optimizer={"lr": 0.01}, scheduler="none")
    return fit(student, _images(), objective=method, config=cfg, num_classes=3, teacher=LiveTeacher(teacher),
               quiet=True, **kw)


FEATURES = [{"kind": "kd", "weight": 0.5, "temperature": 2}, {"kind": "ce", "weight": 0.5},
            {"kind": "hint", "student": "body.2", "teacher": "body.2", "weight": 1.0},
            {"kind": "attention_transfer", "student": "body.0", "teacher": "body.0", "weight": 10.0}]


def test_a_feature_config_trains_a_dict_output_user_model_and_returns_it_without_adapters():
    torch.manual_seed(0)
    student, method = DictNet(width=4), Method(FEATURES)
    result = _fit(student, method, _teacher(width=8), epochs=4)
    assert isinstance(method.adapters["2"], nn.Conv2d)  # 4 → 8 channels: a 1×1 conv was built
    assert result.model is student and set(result.model.state_dict()) == set(DictNet(4).state_dict())
    first, last = result.history[0], result.history[-1]
    assert {"train_kd", "train_ce", "train_hint", "train_attention_transfer"} <= set(last)
    assert last["train_hint"] < first["train_hint"] and last["train_loss"] < first["train_loss"]


def test_the_loss_is_the_weighted_sum_of_its_terms_and_zero_weights_are_skipped():
    method = Method([{"kind": "kd", "weight": 0.7, "temperature": 3}, {"kind": "ce", "weight": 0.3},
                     {"kind": "rkd", "weight": 0.0}])
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    parts = method(Outputs(s), Outputs(t), y)
    expected = 0.7 * soft_target_kl(s, t, 3) + 0.3 * cross_entropy(s, y)
    torch.testing.assert_close(parts["loss"], expected)
    assert "rkd" not in parts


def test_weights_may_follow_a_schedule():
    method = Method([{"kind": "ce", "weight": {"start": 0.0, "end": 1.0}}, {"kind": "kd", "weight": 1.0}])
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert "ce" not in method(Outputs(s), Outputs(t), y, progress=0.0)
    torch.testing.assert_close(method(Outputs(s), Outputs(t), y, progress=1.0)["ce"], cross_entropy(s, y))


def test_attention_maps_are_read_from_a_user_model_that_returns_them():
    torch.manual_seed(0)
    x = torch.randn(32, 5, 8)
    data = ArrayDataset(x, (x[:, 0, 0] > 0).long() + (x[:, 1, 0] > 0).long())
    teacher, student = freeze(AttnNet(heads=2)), AttnNet(heads=1)  # head counts differ: maps are head-averaged
    method = Method([{"kind": "attention_maps", "layers": [[0, 0]], "weight": 1.0}, {"kind": "ce", "weight": 0.1}])
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer={"lr": 0.02}, scheduler="none")
    result = fit(student, data, objective=method, config=cfg, num_classes=3, teacher=LiveTeacher(teacher), quiet=True)
    assert result.history[-1]["train_attention_maps"] < result.history[0]["train_attention_maps"]


def test_a_model_without_attention_maps_is_told_how_to_enable_eager_attention():
    method = Method([{"kind": "attention_maps", "layers": [[0, 0]]}])
    with pytest.raises(ModelError, match='returned no attention maps.*attn_implementation="eager"'):
        method.bind(AttnNet(give_maps=False), freeze(AttnNet()), torch.randn(2, 5, 8))
    with pytest.raises(ConfigError, match="layer 3 asked of AttnNet, which has 1 attention layers"):
        Method([{"kind": "attention_maps", "layers": [[3, 0]]}]).bind(AttnNet(), AttnNet(), torch.randn(2, 5, 8))


def test_shapes_that_cannot_be_matched_name_both_and_the_fix():
    class Pooled(DictNet):
        def forward(self, x):
            return super().forward(nn.functional.avg_pool2d(x, 2))

    hint = Method([{"kind": "hint", "student": "body.2", "teacher": "body.2"}])
    with pytest.raises(ModelError, match=r"losses\[0\] \(hint\).*\(4, 4, 3, 3\).*\(4, 8, 6, 6\).*AdaptiveAvgPool2d"):
        hint.bind(Pooled(4), DictNet(8), torch.randn(4, 1, 6, 6))
    at = Method([{"kind": "attention_transfer", "student": "body.2", "teacher": "body.2"}])
    with pytest.raises(ModelError, match="same H×W.*student \\(4, 4, 3, 3\\) and teacher \\(4, 8, 6, 6\\)"):
        at.bind(Pooled(4), DictNet(8), torch.randn(4, 1, 6, 6))


def test_a_wrong_layer_path_fails_before_training_with_the_nearest_names():
    method = Method([{"kind": "hint", "student": "body.3", "teacher": "body.2"}])
    with pytest.raises(ConfigError, match="DictNet has no module `body.3`.*Nearest: body.2"):
        _fit(DictNet(4), method, _teacher())


def test_a_layer_named_by_an_output_key_lists_the_outputs_keys():
    method = Method([{"kind": "hint", "student": "features", "teacher": "body.2"}])
    with pytest.raises(ConfigError, match=r"not by a key of the model's output.*mapping with the keys \['features', "):
        method.bind(DictNet(4), DictNet(8), torch.randn(2, 1, 6, 6))


def test_teachers_with_another_label_space_are_refused():
    with pytest.raises(ModelError, match="student predicts 3 classes and the teacher 5"):
        Method([{"kind": "kd"}]).bind(DictNet(4), DictNet(8, classes=5), torch.randn(2, 1, 6, 6))


def test_layer_terms_need_a_live_teacher(tmp_path):
    teacher = _teacher()
    cache = CachedTeacher.build_or_load(teacher, _images(), tmp_path, quiet=True)
    cfg = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(ModelError, match="only a live teacher has.*teacher.signal=live"):
        fit(DictNet(4), _images(), objective=Method(FEATURES), config=cfg, num_classes=3, teacher=cache, quiet=True)


@pytest.mark.parametrize("terms, message", [
    ([{"kind": "kd", "weight": 0}, {"kind": "ce", "weight": 0}], "every term has weight 0"),
    ([{"kind": "kd", "weight": -0.5}], r"losses\[0\].weight must be a finite number ≥ 0"),
    ([{"kind": "hint", "studnt": "a"}], "unknown key. Did you mean `student`"),
    ([], "at least one term"),
])
def test_bad_methods_are_clear_errors(terms, message):
    with pytest.raises(ConfigError, match=message):
        Method(terms)


def test_run_configs_check_terms_before_any_compute():
    with pytest.raises(ConfigError, match=r"losses\[0\] reads teacher layers.*set teacher.signal=live"):
        load_config(None, ["teacher.signal=cached", "losses=[{kind: hint, student: features.0, teacher: features.0}]"])
    with pytest.raises(ConfigError, match="`losses.0.rkd.angel`: unknown key. Did you mean `angle`"):
        load_config(None, ["teacher.signal=live", "losses=[{kind: rkd, angel: 1}]"])


def test_adapters_checkpoint_with_the_student_and_resume_exactly(tmp_path, monkeypatch):
    def run(directory: str, resume: bool = False) -> nn.Module:
        return _fit(DictNet(4), Method(FEATURES), _teacher(), epochs=3, checkpoint_dir=tmp_path / directory,
                    resume=resume).model

    torch.manual_seed(0)
    straight = run("straight")
    real_epoch = ClassifierTask.begin_epoch

    def crash_in_last_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    torch.manual_seed(0)
    with monkeypatch.context() as m:
        m.setattr(ClassifierTask, "begin_epoch", crash_in_last_epoch)
        with pytest.raises(KeyboardInterrupt):
            run("split")
    assert any(k.startswith("model.method.adapters") for k in load_file(tmp_path / "split" / "last.safetensors"))
    torch.manual_seed(123)
    resumed = run("split", resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_distill_run_with_losses_exports_the_plain_student(tmp_path):
    from distill.models.zoo import build_model
    from distill.recipes.classify.pipeline import run

    cfg = load_config(None, [f"output_dir={tmp_path}", "quiet=true", "baseline=false", "data.name=digits",
                             "teacher.train.epochs=1", "train.epochs=1", "teacher.signal=live",
                             "teacher.kwargs={widths: [8, 16], convs: 1, fc: 32}",
                             "student.arch=cnn", "student.kwargs={widths: [4, 8], convs: 1, fc: 16}",
                             "bench.repeats=3", "bench.throughput_batch=8",
                             "losses=[{kind: kd, weight: 0.9}, {kind: ce, weight: 0.1}, "
                             "{kind: hint, student: features.0, teacher: features.0}]"])
    run_dir = run(cfg)
    student = build_model(cfg.student, (1, 8, 8), 10)
    load_weights(run_dir / "distilled" / "model.safetensors", student)  # loads: no adapter keys
    assert (run_dir / "report.md").is_file()


def test_a_student_built_from_teacher_layers_trains_in_a_run(tmp_path):
    from safetensors.torch import load_file as read

    from distill.recipes.classify.pipeline import run

    cfg = load_config(None, [f"output_dir={tmp_path}", "quiet=true", "data.name=digits", "teacher.arch=resnet",
                             "teacher.kwargs={depth: 14, width: 4}", "teacher.train.epochs=1", "train.epochs=1", "baseline=false",
                             "student.arch=null", "student.kwargs={}", "student.from_teacher={path: features, "
                             "layers: [0, 1, 3, 5]}", "bench.repeats=3", "bench.throughput_batch=8"])
    run_dir = run(cfg)
    teacher, student = (read(run_dir / s / "model.safetensors") for s in ("teacher", "distilled"))
    assert "features.6.body.0.0.weight" in teacher and "features.6.body.0.0.weight" not in student
    assert student["features.3.body.0.0.weight"].shape == teacher["features.5.body.0.0.weight"].shape
    with pytest.raises(ConfigError, match="either `arch`.*or `from_teacher`"):
        load_config(None, ["student.from_teacher={path: features, every: 2}"])
    with pytest.raises(ConfigError, match="exactly one of `layers`"):
        load_config(None, ["student.arch=null", "student.from_teacher={path: features}"])
