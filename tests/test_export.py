"""Export: ONNX (atomic, dynamic batch, parity, unsupported operators), safetensors, Hugging Face layout.

Tiny random models only; ONNX Runtime and transformers are part of the dev install (scripts/setup.sh).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.core.checkpoint import load_weights, save_weights  # noqa: E402
from distill.core.errors import ExportError, ModelError  # noqa: E402
from distill.data.arrays import ArrayDataset  # noqa: E402
from distill.export.formats import export_safetensors  # noqa: E402
from distill.export.hf import export_hf  # noqa: E402
from distill.export.onnx import (  # noqa: E402
    bench_onnx,
    check_parity,
    export_onnx,
    ort_session,
    quantize_onnx,
    unsupported_operator,
)
from distill.models.config import ModelConfig  # noqa: E402
from distill.models.zoo import CNN, MLP, ResNet, build_model  # noqa: E402

SHAPE = (1, 12, 12)


def _held_out(n: int = 300, shape: tuple[int, ...] = SHAPE) -> ArrayDataset:
    torch.manual_seed(1)
    return ArrayDataset(torch.randn(n, *shape), torch.randint(0, 5, (n,)))


class Spectral(nn.Module):
    """Uses torch.fft.rfft, which the TorchScript ONNX exporter has no conversion for."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.fft.rfft(x.flatten(1)[:, :12]).abs())  # (B, 7)


def _tiny_bert(seed: int = 0) -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("make", [lambda: MLP(SHAPE, 5, [32]), lambda: CNN(SHAPE, 5, [4, 8], fc=16),
                                  lambda: ResNet((3, 8, 8), 5, depth=8, width=4)], ids=["mlp", "cnn", "resnet"])
def test_zoo_models_export_with_parity(make, tmp_path):
    torch.manual_seed(0)
    model = make()
    shape = (3, 8, 8) if isinstance(model, ResNet) else SHAPE
    data = _held_out(shape=shape)
    path = export_onnx(model, data.inputs[:2], tmp_path / "m.onnx")
    report = check_parity(model, path, data, batch_size=64)
    assert report.n == 300 and report.top1_agreement == 1.0 and report.max_abs_diff < 1e-5
    assert model.training  # check_parity restores the mode it found


def test_exported_file_has_a_dynamic_batch_axis(tmp_path):
    model = CNN(SHAPE, 5, [4, 8], fc=16).eval()
    path = export_onnx(model, torch.randn(1, *SHAPE), tmp_path / "m.onnx")  # exported from one example
    session = ort_session(path)
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]  # an image (B, C, H, W)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 7):
        x = torch.randn(batch, *SHAPE)
        got = session.run(None, {"pixel_values": x.numpy()})[0]
        assert got.shape == (batch, 5)
        torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-5, rtol=1e-5)


def test_check_parity_accepts_tensors_and_batches(tmp_path):
    model = MLP(SHAPE, 5, [16])
    path = export_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    x = torch.randn(10, *SHAPE)
    assert check_parity(model, path, x).n == 10
    assert check_parity(model, path, [x[:3], x[3:]]).n == 10


def test_unsupported_operator_is_named(tmp_path):
    target = tmp_path / "spectral.onnx"
    with pytest.raises(ModelError) as err:
        export_onnx(Spectral(), torch.randn(2, *SHAPE), target)
    msg = str(err.value)
    assert "aten::fft_rfft" in msg and "Spectral" in msg and "opset" in msg and "dynamo=True" in msg
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_operator_is_parsed_from_either_exporter_message():
    assert unsupported_operator("Exporting the operator 'aten::linalg_svd' to ONNX opset version 17 is "
                                "not supported") == "aten::linalg_svd"
    assert unsupported_operator("No ONNX function found for <OpOverload(op='aten._linalg_eigh', "
                                "overload='default')>") == "aten._linalg_eigh"
    assert unsupported_operator("something else broke") is None


def test_failed_export_leaves_an_existing_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous export")

    def half_write(model, args, f, **kwargs):  # the exporter dies after writing part of its file
        Path(f).write_bytes(b"\x08\x07half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", half_write)
    with pytest.raises(ModelError, match="exporter crashed"):
        export_onnx(MLP(SHAPE, 5, [8]), torch.randn(2, *SHAPE), target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left beside it


def test_parity_failure_raises_with_numbers_and_keeps_the_file(tmp_path):
    torch.manual_seed(0)
    exported, other = MLP(SHAPE, 5, [16]), MLP(SHAPE, 5, [16])
    path = export_onnx(exported, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    with pytest.raises(ExportError) as err:
        check_parity(other, path, _held_out(50))
    msg = str(err.value)
    assert "max |logit difference|" in msg and "top-1 agreement" in msg and "kept for inspection" in msg
    assert path.is_file() and ort_session(path) is not None


def test_parity_tolerance_is_enforced_on_the_difference_alone(tmp_path, monkeypatch):
    model = MLP(SHAPE, 5, [16])
    path = export_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    import distill.export.onnx as export

    real = export._run_ort
    monkeypatch.setattr(export, "_run_ort", lambda s, x: real(s, x) + 0.01)  # same classes, shifted logits
    with pytest.raises(ExportError, match=r"0\.01 \(tolerance 0\.001\), top-1 agreement 100\.0000%"):
        check_parity(model, path, torch.randn(20, *SHAPE))
    assert check_parity(model, path, torch.randn(20, *SHAPE), atol=0.02).top1_agreement == 1.0
    monkeypatch.setattr(export, "_run_ort", lambda s, x: real(s, x) * float("nan"))
    with pytest.raises(ExportError, match="nan"):
        check_parity(model, path, torch.randn(20, *SHAPE), atol=1.0, min_top1=0.0)


def test_bench_onnx_reports_both_runtimes(tmp_path):
    model = MLP(SHAPE, 5, [16])
    path = export_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    out = bench_onnx(model, path, torch.randn(8, *SHAPE), batch=16, repeats=10, rounds=2)
    for key in ("eager_latency_b1_p50_ms", "ort_latency_b1_p50_ms", "eager_throughput", "ort_throughput"):
        assert out[key] > 0
    assert out["ort_speedup"] == pytest.approx(out["eager_latency_b1_p50_ms"] / out["ort_latency_b1_p50_ms"])


def test_safetensors_export_round_trips(tmp_path):
    model = CNN(SHAPE, 5, [4, 8], fc=16)
    path = export_safetensors(model, tmp_path / "w.safetensors", {"note": "x"})
    fresh = CNN(SHAPE, 5, [4, 8], fc=16)
    assert load_weights(path, fresh) == {"note": "x"}
    x = torch.randn(3, *SHAPE)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_hf_export_reloads_with_plain_transformers(tmp_path):
    bert = _tiny_bert()
    directory = export_hf(bert, tmp_path / "bert")
    reloaded = transformers.AutoModel.from_pretrained(directory).eval()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state,
                                   atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp dir is gone


def test_hf_export_refuses_a_plain_module(tmp_path):
    with pytest.raises(ModelError, match="not a Hugging Face model"):
        export_hf(MLP(SHAPE, 5, [8]), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_export_onnx_with_check(tmp_path, capsys):
    student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [128]}), (1, 8, 8), 10)
    save_weights(tmp_path / "s.safetensors", student)
    out = tmp_path / "s.onnx"
    args = ["export", "data.name=digits", f"student.checkpoint={tmp_path / 's.safetensors'}", "--format", "onnx",
            "--out", str(out), "--check", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["top1_agreement"] == 1.0 and result["parity"]["n"] > 0
    assert out.is_file()
    assert main(args[:4] + ["hf", "--out", str(tmp_path / "hf")]) == 2
    assert "not a Hugging Face model" in capsys.readouterr().err


def test_cli_export_names_the_run_and_writes_classes_and_preprocessing_into_the_onnx_file(tmp_path):
    """A checkpoint inside a finished run, exported with a config that does not name the run: the card is
    titled by the run, and the ONNX file says which classes its outputs are and how inputs are scaled."""
    from distill.data.datasets import load_data
    from distill.recipes.classify.config import load_config

    run = tmp_path / "runs" / "digits-small"
    student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [128]}), (1, 8, 8), 10, seed=0)
    save_weights(run / "student" / "model.safetensors", student)
    (run / "report.json").write_text(json.dumps({"name": "digits-small", "models": {"student": {"accuracy": 0.9}}}))
    out = tmp_path / "s.onnx"
    assert main(["export", "data.name=digits", f"student.checkpoint={run / 'student' / 'model.safetensors'}",
                 "--format", "onnx", "--out", str(out)]) == 0
    assert Path(f"{out}.README.md").read_text().split("---\n")[2].lstrip().startswith("# digits-small: the student")
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    prepare = load_data(load_config(None, ["data.name=digits"]).data).prepare
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert [float(meta[k]) for k in ("input_scale", "input_mean", "input_std")] == [prepare.scale, prepare.mean,
                                                                                     prepare.std]
    assert meta["preprocessing"] == "inputs = (raw / input_scale - input_mean) / input_std"


def test_quantize_onnx_writes_int8_weights_that_keep_the_class(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = MLP(SHAPE, 5, [256, 256]).eval()
    fp32 = export_onnx(model, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m-int8.onnx")
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights: about a quarter
    report = check_parity(model, int8, _held_out(), atol=float("inf"), min_top1=0.95)
    assert 0 < report.max_abs_diff < 0.5  # quantization changes the logits a little, not the classes


def test_quantize_onnx_failure_leaves_the_destination_untouched(tmp_path):
    bad, dst = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    bad.write_bytes(b"not an onnx model")
    dst.write_bytes(b"previous")
    with pytest.raises(ModelError, match="could not quantize .*bad.onnx.*unchanged"):
        quantize_onnx(bad, dst)
    assert dst.read_bytes() == b"previous"
    with pytest.raises(ModelError, match="does not exist"):
        quantize_onnx(tmp_path / "missing.onnx", dst)


def test_cli_export_int8_onnx_with_check(tmp_path, capsys):
    student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [128]}), (1, 8, 8), 10, seed=0)
    with torch.no_grad():  # rows of the output layer alike up to 1e-4: int8 rounding flips the near ties
        last = [m for m in student.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.copy_(last.weight[:1] + 1e-4 * last.weight)
        last.bias.zero_()
    save_weights(tmp_path / "s.safetensors", student)
    out = tmp_path / "s-int8.onnx"
    common = ["export", "data.name=digits", f"student.checkpoint={tmp_path / 's.safetensors'}"]
    assert main([*common, "--format", "onnx", "--out", str(out), "--int8", "--check"]) == 2
    err = capsys.readouterr().err
    assert "top-1 agreement" in err and "required 99.00%" in err and "ship the fp32 ONNX file" in err
    assert out.is_file()  # kept for inspection
    assert main([*common, "--format", "onnx", "--out", str(out), "--int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(out)
    assert main([*common, "--format", "safetensors", "--out", str(tmp_path / "x"), "--int8"]) == 2
    assert "does not apply to --format safetensors" in capsys.readouterr().err
