"""`distill search`: candidates from a space, side-by-side measurement, Pareto front, recommendation."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.cli import main
from distill.core.errors import ConfigError
from distill.recipes.search import (
    Candidate,
    Requirements,
    assignments,
    load_search_config,
    rank,
    recommend,
    shortfalls,
)


def _c(name: str, accuracy: float, latency: float, size: float, params: int, drop: float = 0.0,
       speedup: float = 1.0) -> Candidate:
    return Candidate(name, {}, accuracy=accuracy, drop=drop, params=params, size_mb=size, latency_p50_ms=latency,
                     latency_p95_ms=latency, speedup=speedup)


def test_grid_and_random_assignments_are_complete_or_seeded():
    space = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert len(assignments(space, "grid", None, 0)) == 6
    assert assignments(space, "random", 3, 7) == assignments(space, "random", 3, 7)
    assert len(assignments(space, "random", 3, 7)) == 3


def test_pareto_front_and_the_smallest_candidate_meeting_the_requirements():
    cands = [_c("big", 90, 5.0, 4.0, 400, drop=0.5, speedup=2), _c("mid", 89, 2.0, 2.0, 200, drop=1.5, speedup=5),
             _c("small", 85, 1.0, 1.0, 100, drop=5.5, speedup=10), _c("bad", 84, 3.0, 3.0, 300, drop=6.5, speedup=3)]
    req = Requirements(max_accuracy_drop=2.0, min_speedup=4)
    rank(cands, req)
    assert [c.name for c in cands if c.pareto] == ["big", "mid", "small"]  # "bad" is dominated by "mid"
    assert recommend(cands).name == "mid"
    assert shortfalls(cands[2], req) == {"max_accuracy_drop": pytest.approx(3.5)}


def test_space_keys_are_checked_against_the_run_config(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"space": {"student.kwargs.hidden": [[16]], "kd.temprature": [2]}}))
    with pytest.raises(ConfigError, match="(?s)space.kd.temprature.*Did you mean `temperature`"):
        load_search_config(path)


def test_a_search_trains_measures_recommends_and_resumes(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path),
        "overrides": ["data.name=digits", "teacher.train.epochs=1", "train.epochs=1", "bench.repeats=3",
                      "bench.throughput_batch=8",
                      f"teacher.cache_dir={tmp_path / 'cache'}"],
        "space": {"student.kwargs.hidden": [[8], [64]]},
        "requirements": {"max_accuracy_drop": 100.0, "min_speedup": 0.01}}))
    assert main(["search", str(path)]) == 0
    report = json.loads((tmp_path / "s" / "search.json").read_text())
    assert report["requirement_met"] and report["recommended"]["values"] == {"student.kwargs.hidden": [8]}
    assert (tmp_path / "s" / "plots" / "pareto.png").stat().st_size > 0
    assert "Recommended" in (tmp_path / "s" / "search.md").read_text()
    capsys.readouterr()

    strict = yaml.safe_load(path.read_text())
    strict["requirements"] = {"max_accuracy_drop": 0.0, "min_speedup": 1000}
    path.write_text(yaml.safe_dump(strict))
    stamp = (tmp_path / "s" / "candidates").stat().st_mtime_ns
    assert main(["search", str(path), "--resume"]) == 0  # nothing retrained: only the ranking changes
    assert (tmp_path / "s" / "candidates").stat().st_mtime_ns == stamp
    report = json.loads((tmp_path / "s" / "search.json").read_text())
    assert not report["requirement_met"] and "min_speedup" in report["unmet"] and len(report["closest"]) == 2
    assert "No candidate meets every requirement" in (tmp_path / "s" / "search.md").read_text()
    assert "no candidate meets the requirements" in capsys.readouterr().out
    assert main(["search", str(path)]) == 2  # exists, no --resume: refused, nothing overwritten


def test_latency_can_be_measured_in_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path),
        "overrides": ["data.name=digits", "teacher.train.epochs=1", "train.epochs=1", "bench.repeats=3",
                      "bench.throughput_batch=8", f"teacher.cache_dir={tmp_path / 'cache'}"],
        "space": {"student.kwargs.hidden": [[8]]},
        "requirements": {"min_speedup": 0.01, "runtime": "onnxruntime"}}))
    assert main(["search", str(path)]) == 0
    report = json.loads((tmp_path / "s" / "search.json").read_text())
    assert report["requirements"]["runtime"] == "onnxruntime"
    exported = sorted(p.name for p in (tmp_path / "s" / "candidates" / "onnx").iterdir())
    assert exported == sorted(["teacher.onnx", f"{report['candidates'][0]['name']}.onnx"])
    assert report["candidates"][0]["params"] == 64 * 8 + 8 + 8 * 10 + 10  # the PyTorch model's own count


def test_onnx_runtime_model_answers_like_the_pytorch_one(tmp_path):
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    from distill.export.onnx import as_onnxruntime

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 1, 4, 4)
    ort_model = as_onnxruntime(model, x[:1], tmp_path / "m.onnx")
    assert torch.allclose(ort_model(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in ort_model.parameters()) == sum(p.numel() for p in model.parameters())


def test_onnx_runtime_timing_is_refused_on_a_gpu():
    with pytest.raises(ValueError, match="runtime: onnxruntime times models on the CPU"):
        Requirements(runtime="onnxruntime", device="cuda")
