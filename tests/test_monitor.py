"""`distill monitor`: sampling, windows and alerts on tiny models, then the command's exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.cli import main
from distill.core.checkpoint import save_weights
from distill.core.errors import DataError
from distill.eval.monitor import MonitorOptions, read_inputs, sample, window_stats, windows
from distill.models.zoo import build_model
from distill.recipes.classify.config import load_config


def _linear_identity() -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    return layer


class Drifting(nn.Module):
    """The teacher's logits, except on large inputs, where its two classes are swapped."""

    def __init__(self):
        super().__init__()
        self.linear = _linear_identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)  # (B, 2)
        return torch.where(x.sum(-1, keepdim=True) > 10, logits.flip(-1), logits)


def test_agreeing_windows_pass_and_drifting_ones_alert():
    g = torch.Generator().manual_seed(0)
    normal, drifted = torch.randn(250, 2, generator=g), torch.randn(130, 2, generator=g) + 20
    stream = iter(list(torch.cat([normal, drifted])))
    out = list(windows(stream, _linear_identity(), Drifting(), MonitorOptions(window=100, batch_size=32)))
    assert [w.n for w in out] == [100, 100, 100, 80]  # the final partial window is reported
    assert [w.alert for w in out] == [False, False, True, True]
    assert out[0].agreement == 1.0 and out[0].kl == pytest.approx(0.0, abs=1e-6)
    assert out[2].agreement == pytest.approx(0.5) and out[3].agreement == 0.0
    assert out[2].reasons[0].startswith("disagreement 0.5000 > 0.05") and "kl" in out[2].reasons[1]
    assert [w.window for w in out] == [1, 2, 3, 4]  # numbered as the README shows them
    assert json.loads(out[3].to_json()) == {"window": 4, "n": 80, "agreement": 0.0, "kl": out[3].kl,
                                            "alert": True, "reasons": out[3].reasons}


def test_a_disagreement_at_the_threshold_does_not_alert():
    teacher = torch.tensor([[1.0, 0.0]] * 20)
    student = teacher.clone()
    student[0] = torch.tensor([0.0, 1.0])  # 1 of 20 = exactly 5%
    stats = window_stats(0, teacher, student, MonitorOptions(max_kl=10.0))
    assert stats.agreement == 0.95 and not stats.alert
    assert window_stats(0, teacher, student, MonitorOptions(max_disagreement=0.04, max_kl=10)).alert


def test_sampling_is_seeded_and_keeps_the_fraction():
    kept = list(sample(range(20_000), 0.1, seed=3))
    assert 1_850 < len(kept) < 2_150
    assert kept == list(sample(range(20_000), 0.1, seed=3))
    assert kept != list(sample(range(20_000), 0.1, seed=4))
    assert list(sample(range(50), 1.0)) == list(range(50))
    # the decision for an input depends only on the seed and its position, not on what follows
    assert list(sample(range(1_000), 0.1, seed=3)) == [i for i in kept if i < 1_000]


def test_an_empty_stream_or_nothing_sampled_says_so():
    with pytest.raises(DataError, match="had no inputs"):
        list(sample(iter([]), 0.5))
    with pytest.raises(DataError, match="none of the stream's 3 inputs was sampled .* raise --sample"):
        list(sample(range(3), 1e-9))


def test_malformed_lines_name_the_line_and_what_was_expected():
    text = '{"inputs": [1, 2]}\n\n[3, 4]\n{"inputs": [1, 2\n'
    stream = read_inputs(io.StringIO(text), (2,))
    assert [x.tolist() for x in (next(stream), next(stream))] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(DataError, match=r"line 4: not valid JSON .*expected one input per line"):
        next(stream)
    for bad, why in (('{"x": [1, 2]}', 'an object without an "inputs" key'),
                     ("3", "the input is int, not a nested list"),
                     ("[[1, 2], [3]]", "not a rectangular"),
                     ("[1, 2, 3]", r"an input of shape \(3,\), expected \(2,\) \(toy\)")):
        with pytest.raises(DataError, match=f"line 1: {why}"):
            list(read_inputs(io.StringIO(bad), (2,), where="toy"))


def test_stacked_npy_inputs_are_read_row_by_row(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    rows = list(read_inputs(tmp_path / "x.npy", (2,)))
    assert len(rows) == 6 and rows[5].tolist() == [10.0, 11.0]
    with pytest.raises(DataError, match=r"stacked as \(6, 2\), expected \(N, 3\)"):
        list(read_inputs(tmp_path / "x.npy", (3,)))


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A digits config with tiny MLPs, teacher weights, an identical student and a different one."""
    root = tmp_path_factory.mktemp("monitor")
    config = root / "monitor.yaml"
    config.write_text("data: {name: digits}\nteacher: {arch: mlp, kwargs: {hidden: [8]}}\n"
                      "student: {arch: mlp, kwargs: {hidden: [8]}}\n")
    cfg = load_config(config)
    teacher = build_model(cfg.teacher, (1, 8, 8), 10, seed=0)
    save_weights(root / "teacher.safetensors", teacher)
    save_weights(root / "different.safetensors", build_model(cfg.student, (1, 8, 8), 10, seed=1))
    g = torch.Generator().manual_seed(0)
    lines = [json.dumps({"inputs": x.tolist()}) for x in torch.randn(50, 1, 8, 8, generator=g)]
    (root / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "config": config, "teacher": root / "teacher.safetensors",
            "different": root / "different.safetensors", "inputs": root / "inputs.jsonl"}


def _monitor(setup: dict[str, Path], student: str, *flags: str) -> int:
    return main(["monitor", str(setup["config"]), f"teacher.checkpoint={setup['teacher']}",
                 f"student.checkpoint={setup[student]}", *flags])


def test_exit_0_when_the_student_agrees_and_3_when_it_drifts(setup, capsys):
    args = ("--inputs", str(setup["inputs"]), "--sample", "1", "--window", "20", "--json")
    assert _monitor(setup, "teacher", *args) == 0  # the teacher's own weights as the student
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [w["n"] for w in lines] == [20, 20, 10] and not any(w["alert"] for w in lines)
    assert lines[0]["agreement"] == 1.0

    assert _monitor(setup, "different", *args) == 3
    assert all(json.loads(line)["alert"] for line in capsys.readouterr().out.splitlines())
    assert _monitor(setup, "different", *args, "--fail-fast") == 3
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and "--fail-fast" in captured.err


def test_the_table_and_stdin(setup, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(setup["inputs"].read_text()))
    assert _monitor(setup, "teacher", "--inputs", "-", "--sample", "0.5", "--window", "100") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["window", "n", "agreement", "KL(T‖S)", "status"]
    assert len(out) == 2 and out[1].split()[-1] == "ok" and 10 < int(out[1].split()[1]) < 40


def test_an_empty_stream_exits_2_with_a_message(setup, capsys, tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("")
    assert _monitor(setup, "teacher", "--inputs", str(tmp_path / "empty.jsonl")) == 2
    captured = capsys.readouterr()
    assert "the input stream had no inputs" in captured.err and captured.out == ""


def test_bad_lines_and_options_exit_2(setup, capsys, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(setup["inputs"].read_text().splitlines()[0] + "\n[1, 2]\n")
    assert _monitor(setup, "teacher", "--inputs", str(bad), "--sample", "1") == 2
    err = capsys.readouterr().err
    assert f"{bad} line 2: an input of shape (2,), expected (1, 8, 8) (data.name=digits)" in err
    assert _monitor(setup, "teacher", "--inputs", str(bad), "--sample", "0") == 2
    assert "--sample must be a fraction in (0, 1]" in capsys.readouterr().err


def test_inputs_in_file_units_are_warned_about_and_taken_with_raw(setup, capsys, tmp_path: Path):
    from distill.data.config import DataConfig
    from distill.data.datasets import load_data

    data = load_data(DataConfig(name="digits"))
    prep = data.prepare
    model_x = torch.stack([data.test[i]["inputs"] for i in range(40)])
    raw_x = (model_x * prep.std + prep.mean) * prep.scale  # back to the file's units (pixels 0-16)
    for name, xs in (("model.jsonl", model_x), ("raw.jsonl", raw_x)):
        (tmp_path / name).write_text("".join(json.dumps({"inputs": x.tolist()}) + "\n" for x in xs))
    args = ("--sample", "1", "--window", "40", "--json")
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert _monitor(setup, "different", "--inputs", str(tmp_path / "model.jsonl"), *args) in (0, 3)
    assert not [w for w in seen if "--raw" in str(w.message)]  # the model's own inputs: no warning
    as_model = capsys.readouterr().out
    assert _monitor(setup, "different", "--inputs", str(tmp_path / "raw.jsonl"), "--raw", *args) in (0, 3)
    assert capsys.readouterr().out == as_model  # --raw preprocesses as the training data was
    with pytest.warns(UserWarning, match=r"unlike the model's own inputs.*need --raw"):
        _monitor(setup, "different", "--inputs", str(tmp_path / "raw.jsonl"), *args)
