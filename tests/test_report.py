"""The report renders what report.json holds, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.core.errors import DistillError
from distill.eval.report import markdown, render
from distill.eval.validate import validate


def _model(acc: float, params: int, latency: float) -> dict:
    return {"accuracy": acc, "per_class_accuracy": [acc, acc], "nll": 0.3, "ece": 0.02, "params": params,
            "size_mb": params * 4e-6, "latency_b1_p50_ms": latency, "latency_b1_p95_ms": 2 * latency,
            "throughput": 1000.0 / latency, "peak_memory_mb": 1.0}


def _report(student_params: int) -> dict:
    return {
        "name": "unit", "date": "2026-01-01T00:00:00+00:00", "machine": "test machine",
        "dataset": {"name": "toy", "train": 10, "val": 2, "test": 1000, "classes": ["a", "b"]},
        "models": {"teacher": _model(0.9, 1000, 2.0), "baseline": _model(0.7, student_params, 0.5),
                   "distilled": {**_model(0.8, student_params, 0.5), "agreement": 0.85, "kl_teacher": 0.1}},
        "summary": {"compression": 1000 / student_params, "speedup_b1": 4.0, "retention": 0.8 / 0.9,
                    "gap_closed": 0.5},
    }


def test_markdown_shows_the_reports_numbers():
    text = markdown(_report(250), ["plots/a.png"])
    assert "**4.0×** fewer parameters" in text and "**4.0×** faster" in text
    assert "closes **50%**" in text
    assert "| distilled | 80.00% | 85.00% | 0.1000 |" in text
    assert "| teacher | 90.00% | – | – |" in text  # no agreement with itself
    assert "![a](plots/a.png)" in text


def test_the_share_of_a_gap_within_test_noise_is_not_stated():
    report = _report(250)
    report["models"]["baseline"]["accuracy"] = 0.898  # 0.2 points below the teacher on 1,000 examples
    report["summary"]["gap_closed"] = -15.0
    text = markdown(report, [])
    assert "closes **" not in text and "(+0.2 points) is within the test set's noise (±2.7 on 1,000 examples)" in text


def test_a_student_with_more_parameters_is_not_called_smaller():
    text = markdown(_report(2000), [])
    assert "**2.0×** more parameters" in text and "smaller" not in text


def test_render_writes_report_and_plots(tmp_path: Path):
    (tmp_path / "report.json").write_text(json.dumps(_report(250)))
    (tmp_path / "distilled").mkdir()
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_accuracy": 0.5 + e / 10} for e in range(3)]
    (tmp_path / "distilled" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = render(tmp_path)
    assert out == tmp_path / "report.md" and out.read_text().startswith("# distill report: unit")
    for png in ("learning_curves.png", "accuracy_vs_cost.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def _with_validation(report: dict) -> dict:
    teacher = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 1.0]])  # wrong on example 1
    section = validate(teacher, student, torch.tensor([0, 0, 1, 1])).to_dict()
    return {**report, "validation": {"baseline": section, "distilled": section}}


def test_markdown_shows_where_the_student_lost_and_the_largest_disagreements():
    text = markdown(_with_validation(_report(250)), [])
    lost = text.split("## Where the student lost most")[1].split("##")[0]
    assert "| a | 2 | 100.0% | 50.0% | -50.0 pts |" in lost  # class names, worst class first
    assert lost.index("| a |") < lost.index("| b |")
    biggest = text.split("## Largest disagreements")[1]
    assert "on **1** of 4 test examples" in biggest
    assert "| row 1 | a | a (95.3%) | b (73.1%) | 26.9% |" in biggest  # no words to show: the test row


def test_a_report_without_validation_still_renders():
    text = markdown(_report(250), [])  # a run made before validation existed
    assert "Where the student lost most" not in text and "Largest disagreements" not in text


def test_render_draws_reliability_and_confusion_plots(tmp_path: Path):
    (tmp_path / "report.json").write_text(json.dumps(_with_validation(_report(250))))
    (tmp_path / "distilled").mkdir()
    row = {"epoch": 0, "train_loss": 1.0, "val_accuracy": 0.5}
    (tmp_path / "distilled" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    text = render(tmp_path).read_text()
    for png in ("reliability.png", "confusion.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG" and f"plots/{png}" in text


def test_render_without_a_report_json_says_what_is_missing(tmp_path: Path):
    with pytest.raises(DistillError, match="report.json not found"):
        render(tmp_path)


@pytest.mark.parametrize("values, view, expected", [([0.11, 0.42], (0.08, 0.6), [0.1, 0.2, 0.5]),
                                                    ([0.031, 0.034], (0.03, 0.035), [0.031, 0.034])])  # no 1-2-5
def test_a_log_axis_always_has_labelled_ticks(values, view, expected):
    from distill.eval.report import _plain_log_ticks, pyplot

    fig, ax = pyplot().subplots()
    ax.scatter(values, [1] * len(values))
    ax.set(xscale="log", xlim=view)
    _plain_log_ticks(ax, values)
    ticks = list(ax.xaxis.get_major_locator()())
    assert ticks == pytest.approx(expected)
    assert [ax.xaxis.get_major_formatter()(t, 0) for t in ticks] == [f"{t:.3g}" for t in expected]
    pyplot().close(fig)


def test_a_text_disagreement_is_shown_by_its_words(tmp_path: Path):
    from lm_helpers import make_tokenizer

    from distill.data.arrays import ArrayDataset, DataSplits
    from distill.data.text import Tokenize
    from distill.recipes.classify.pipeline import _with_inputs

    prepare = Tokenize(make_tokenizer(tmp_path), 6)
    x = prepare(["And God said Let there be light", "the earth"])
    test = ArrayDataset(x, torch.tensor([0, 1]))
    data = DataSplits(train=test, val=test, test=test, num_classes=2, input_shape=tuple(x.shape[1:]),
                      prepare=prepare)
    rows = _with_inputs({"disagreements": [{"index": 1}, {"index": 0}]}, data)["disagreements"]
    assert [r["input"] for r in rows] == ["the earth", "And God said Let there be"]  # what the model read
    assert _with_inputs({"disagreements": [{"index": 0}]}, DataSplits(
        train=test, val=test, test=test, num_classes=2, input_shape=(2, 6)))["disagreements"] == [{"index": 0}]


def test_an_image_disagreement_is_pictured_with_the_number_its_table_row_gives(tmp_path: Path):
    from distill.data.arrays import ArrayDataset, DataSplits
    from distill.eval.figures import pixels
    from distill.recipes.classify.pipeline import _with_inputs

    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    x[1, 0, :, 4] = 9.0  # a bright vertical stroke
    test = ArrayDataset(x, torch.tensor([0, 0, 1, 1]))
    data = DataSplits(train=test, val=test, test=test, num_classes=2, input_shape=(1, 8, 8), modality="images")
    report = _with_validation(_report(250))
    for name, section in report["validation"].items():
        report["validation"][name] = _with_inputs(json.loads(json.dumps(section)), data, pictures=name == "distilled")
    row = report["validation"]["distilled"]["disagreements"][0]
    image = pixels(row["thumbnail"])
    assert row["index"] == 1 and image.shape == (8, 8) and (image[:, 4] == 255).all() and (image[:, 0] < 255).all()
    assert "thumbnail" not in report["validation"]["baseline"]["disagreements"][0]  # only the one drawn
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = render(tmp_path).read_text()
    assert "| 1. row 1 (pictured below) | a |" in text
    assert "](plots/disagreements.png)" in text.split("## Largest disagreements")[1].split("##")[0]
    assert (tmp_path / "plots" / "disagreements.png").read_bytes()[:4] == b"\x89PNG"


def test_a_thumbnail_is_small_full_contrast_and_only_of_images():
    from distill.eval.figures import pixels, thumbnail

    def shape(x):
        small = thumbnail(x)
        return None if small is None else pixels(small).shape

    gray = pixels(thumbnail(torch.linspace(-2, 2, 100 * 100).reshape(1, 100, 100)))
    assert gray.shape == (48, 48) and gray.min() == 0 and gray.max() == 255
    assert shape(torch.rand(3, 20, 30)) == (20, 30, 3)
    assert shape(torch.rand(4, 20, 30)) == (20, 30, 3)  # RGBA: colour, alpha dropped
    assert shape(torch.rand(2, 40, 101)) == (40, 48)  # a stack of maps (spectrogram): its first, each side ≤ 48
    assert shape(torch.rand(1, 64, 3000)) == (48, 48)  # a long spectrogram stays readable
    assert thumbnail(torch.rand(784)) is None and thumbnail(torch.rand(1, 1, 40)) is None
    assert len(json.dumps(thumbnail(torch.rand(3, 32, 32)))) < 5000  # report.json stays small
