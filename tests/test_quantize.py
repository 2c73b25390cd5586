"""int8 quantization: dynamic (Linear), static (conv + linear, calibrated), QAT through `fit`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distill.compress import quantize as q
from distill.core.errors import ConfigError
from distill.eval.metrics import predict
from distill.losses.methods import CE, KD
from distill.models.config import ModelConfig
from distill.models.zoo import build_model
from distill.teachers.signals import LiveTeacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

pytestmark = pytest.mark.skipif("x86" not in q.available_backends(), reason="needs the x86 int8 engine")


def _trained(digits, arch: str, kwargs: dict, epochs: int) -> nn.Module:
    model = build_model(ModelConfig(arch=arch, kwargs=kwargs), digits.input_shape, digits.num_classes, seed=0)
    config = TrainConfig(epochs=epochs, batch_size=32, optimizer={"lr": 0.01})
    return fit(model, digits.train, objective=CE(), config=config, num_classes=10, quiet=True).model


@pytest.fixture(scope="module")
def cnn(digits) -> nn.Module:
    return _trained(digits, "cnn", {"widths": [8], "fc": 16, "convs": 1}, epochs=3)


def _accuracy(model: nn.Module, data) -> float:
    return float((predict(model, data).argmax(-1) == data.labels).float().mean())


def test_dynamic_int8_mlp_agrees_with_fp32_and_is_smaller(digits):
    mlp = _trained(digits, "mlp", {"hidden": [64]}, epochs=5)
    int8 = q.quantize_dynamic_int8(mlp)
    fp32_pred = predict(mlp, digits.test).argmax(-1)
    int8_pred = predict(int8, digits.test).argmax(-1)
    assert (fp32_pred == int8_pred).float().mean() >= 0.95
    assert _accuracy(mlp, digits.test) > 0.6  # a real model, not a constant one
    assert set(q.int8_layers(int8)) == {"net.1", "net.3"}  # both Linear layers
    assert q.serialized_size_mb(int8) < 0.6 * q.serialized_size_mb(mlp)
    assert isinstance(mlp.net[1], nn.Linear)  # the input model is left as it was
    assert set(q.int8_layers(q.quantize_dynamic_int8(mlp, modules=["net.3"]))) == {"net.3"}


def test_static_int8_cnn_stores_int8_conv_weights(digits, cnn):
    int8 = q.quantize_static_int8(cnn, digits.train, batches=2, batch_size=64)
    layers = dict(int8.named_modules())
    conv = layers["features.0.0"]
    assert isinstance(conv, torch.ao.nn.intrinsic.quantized.ConvReLU2d)  # conv-BN-ReLU fused
    assert conv.weight().dtype == torch.qint8
    assert set(q.int8_layers(int8)) == {"features.0.0", "head.1", "head.4"}
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear)) for m in int8.modules())
    agree = (predict(cnn, digits.test).argmax(-1) == predict(int8, digits.test).argmax(-1))
    assert agree.float().mean() >= 0.9


def test_qat_with_kd_through_fit_converts_to_a_working_int8_model(digits, cnn):
    qat = q.prepare_qat(cnn, digits.train.inputs[:4])
    config = TrainConfig(epochs=1, batch_size=32, optimizer={"lr": 1e-3})
    result = fit(qat, digits.train, objective=KD(temperature=2.0, ratio=0.9), config=config, num_classes=10,
                 teacher=LiveTeacher(cnn), val_data=digits.val, quiet=True)
    assert {"train_kd", "train_ce"} <= set(result.history[0])
    int8 = q.convert_qat(q.freeze_qat(result.model))
    assert set(q.int8_layers(int8)) == {"features.0.0", "head.1", "head.4"}
    assert _accuracy(int8, digits.test) >= _accuracy(cnn, digits.test) - 0.05


def test_saved_static_int8_model_loads_back_identical(digits, cnn, tmp_path):
    int8 = q.quantize_static_int8(cnn, digits.train, batches=1)
    q.save_int8(int8, tmp_path / "int8.pt")
    other = build_model(ModelConfig(arch="cnn", kwargs={"widths": [8], "fc": 16, "convs": 1}),
                        digits.input_shape, 10, seed=1)  # same architecture, other weights
    back = q.load_int8(other, tmp_path / "int8.pt", method="static", example=digits.train.inputs[:4])
    assert torch.equal(predict(back, digits.test), predict(int8, digits.test))


def test_unavailable_backend_names_it_the_available_ones_and_the_fix(monkeypatch, cnn, digits):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines",
                        property(lambda self: ["qnnpack", "none"]))
    with pytest.raises(ConfigError) as err:
        q.quantize_static_int8(cnn, digits.train, backend="x86")
    message = str(err.value)
    assert "`x86`" in message and "['qnnpack']" in message and "backend=" in message
    assert q.check_backend("qnnpack") == "qnnpack"
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["none"]))
    with pytest.raises(ConfigError, match="no int8 engine"):
        q.quantize_dynamic_int8(cnn, backend="fbgemm")


def test_cli_quantize_prints_fp32_and_int8_and_writes_the_int8_model(digits, tmp_path, capsys):
    from distill.cli import main
    from distill.core.checkpoint import save_weights

    save_weights(tmp_path / "student.safetensors", _trained(digits, "mlp", {"hidden": [32]}, epochs=2))
    config = tmp_path / "job.yaml"
    config.write_text("data: {name: digits, limit: 300}\nteacher: {arch: mlp}\n"
                      "student: {arch: mlp, kwargs: {hidden: [32]}}\nbench: {repeats: 3, throughput_batch: 8}\n")
    argv = ["quantize", str(config), f"student.checkpoint={tmp_path / 'student.safetensors'}",
            "--method", "dynamic", "--out", str(tmp_path / "int8.pt"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"fp32", "int8"} and out["int8"]["int8_layers"] == 2
    assert abs(out["int8"]["accuracy"] - out["fp32"]["accuracy"]) < 0.05
    assert out["int8"]["size_mb"] < out["fp32"]["size_mb"]
    assert (tmp_path / "int8.pt").is_file()
    assert main([*argv[:5], "--backend", "nope"]) == 2
    assert "`nope` is not available" in capsys.readouterr().err


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))  # data-dependent branch


def test_untraceable_model_points_to_dynamic(digits):
    from distill.core.errors import ModelError

    with pytest.raises(ModelError, match="method=dynamic"):
        q.quantize_static_int8(_Branchy(), digits.train, batches=1)
    assert q.int8_layers(q.quantize_dynamic_int8(_Branchy())) == {"fc": "Linear"}


def test_cli_quantize_qat_distils_from_the_teacher_and_reloads(digits, tmp_path, capsys):
    from distill.cli import main
    from distill.core.checkpoint import save_weights

    save_weights(tmp_path / "student.safetensors", _trained(digits, "mlp", {"hidden": [32]}, epochs=2))
    save_weights(tmp_path / "teacher.safetensors", _trained(digits, "mlp", {"hidden": [64]}, epochs=3))
    config = tmp_path / "job.yaml"
    config.write_text("data: {name: digits, limit: 300}\nteacher: {arch: mlp, kwargs: {hidden: [64]}}\n"
                      "student: {arch: mlp, kwargs: {hidden: [32]}}\nbench: {repeats: 3, throughput_batch: 8}\n"
                      "quiet: true\n")
    common = ["quantize", str(config), f"student.checkpoint={tmp_path / 'student.safetensors'}", "--method", "qat"]
    assert main(common) == 2
    assert "give the trained teacher as teacher.checkpoint" in capsys.readouterr().err
    argv = [*common, f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}", "--qat-epochs", "1",
            "--out", str(tmp_path / "qat.pt"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["int8"]["int8_layers"] == 2 and out["int8"]["size_mb"] < out["fp32"]["size_mb"]
    assert out["int8"]["accuracy"] > 0.5  # fine-tuned from a trained student, not from scratch
    shell = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [32]}), digits.input_shape, 10, seed=3)
    reloaded = q.load_int8(shell, tmp_path / "qat.pt", method="qat", example=digits.train.inputs[:8])
    assert _accuracy(reloaded, digits.test) == pytest.approx(out["int8"]["accuracy"])  # the same int8 model
