"""The command line, called in-process on one tiny finished run shared by the module."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import distill.recipes.classify.pipeline
from distill.cli import main

TINY = ["data.limit=200", "data.label_fraction=1", "teacher.train.epochs=1", "train.epochs=1", "bench.repeats=3",
        "bench.throughput_batch=32", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """`distill run` once with the built-in config made tiny; returns (run_dir, its arguments)."""
    root = tmp_path_factory.mktemp("cli")
    args = ["run", *TINY, f"output_dir={root / 'runs'}", f"teacher.cache_dir={root / 'cache'}"]
    with pytest.MonkeyPatch.context() as m:
        m.chdir(root)
        assert main(args) == 0
    return root / "runs" / "default", args


def _checkpoints(run_dir: Path) -> list[str]:
    return [f"teacher.checkpoint={run_dir / 'teacher' / 'model.safetensors'}",
            f"student.checkpoint={run_dir / 'distilled' / 'model.safetensors'}"]


def test_run_writes_report_plots_config_and_models(finished_run):
    run_dir, _ = finished_run
    for name in ("report.md", "report.json", "config.yaml", "plots/learning_curves.png",
                 "plots/accuracy_vs_cost.png", "teacher/model.safetensors", "baseline/model.safetensors",
                 "distilled/model.safetensors", "distilled/metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots" / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "baseline", "distilled"}
    assert report["dataset"]["train"] == 200
    assert "agreement" in report["models"]["distilled"] and "agreement" not in report["models"]["teacher"]
    assert report["summary"]["compression"] == pytest.approx(
        report["models"]["teacher"]["params"] / report["models"]["distilled"]["params"])
    md = (run_dir / "report.md").read_text()
    assert "| distilled |" in md and "plots/learning_curves.png" in md
    assert f"{report['models']['teacher']['params']:,}" in md
    assert "train:\n  epochs: 1" in (run_dir / "config.yaml").read_text()


def test_rerun_without_resume_refuses_and_overwrites_nothing(finished_run, capsys):
    run_dir, args = finished_run
    before = (run_dir / "report.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and str(run_dir) in err
    assert "Traceback" not in err
    assert (run_dir / "report.json").read_bytes() == before


def test_resume_of_a_finished_run_skips_every_stage(finished_run, monkeypatch, capsys):
    run_dir, args = finished_run
    models = {s: (run_dir / s / "model.safetensors").read_bytes()
              for s in ("teacher", "baseline", "distilled")}
    monkeypatch.setattr(distill.recipes.classify.pipeline, "fit",
                        lambda *a, **k: pytest.fail("a finished stage was retrained"))
    loud = [a for a in args if a != "--quiet"]  # display flags may change on resume
    assert main([*loud, "--resume"]) == 0
    assert "report.md" in capsys.readouterr().out
    for stage, raw in models.items():
        assert (run_dir / stage / "model.safetensors").read_bytes() == raw


def test_resume_with_a_changed_config_is_refused(finished_run, capsys):
    run_dir, args = finished_run
    assert main([*args, "kd.ratio=0.7", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "(sections: kd)" in err
    assert f"teacher.checkpoint={run_dir / 'teacher' / 'model.safetensors'}" in err


def test_typo_key_names_the_nearest_valid_key(tmp_path: Path, capsys):
    assert main(["run", "train.epohcs=1", f"output_dir={tmp_path}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`train.epohcs`: unknown key. Did you mean `epochs`?" in err
    assert not any(tmp_path.iterdir())  # validated before anything was written


def test_report_rerenders(finished_run, capsys):
    run_dir, _ = finished_run
    (run_dir / "report.md").unlink()
    (run_dir / "plots" / "accuracy_vs_cost.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report.md") in capsys.readouterr().out
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "accuracy_vs_cost.png").is_file()


def test_report_of_a_directory_without_a_run(tmp_path: Path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json" in capsys.readouterr().err


def test_eval_json_matches_the_runs_report(finished_run, capsys):
    run_dir, _ = finished_run
    capsys.readouterr()
    assert main(["eval", *_checkpoints(run_dir), "data.limit=200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = json.loads((run_dir / "report.json").read_text())["models"]
    assert out["teacher"]["accuracy"] == report["teacher"]["accuracy"]
    assert out["student"]["accuracy"] == report["distilled"]["accuracy"]
    assert out["student"]["agreement"] == report["distilled"]["agreement"]


def test_eval_table(finished_run, capsys):
    run_dir, _ = finished_run
    capsys.readouterr()
    assert main(["eval", *_checkpoints(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "teacher", "student"]
    assert any(line.startswith("accuracy") for line in lines)
    agreement = next(line.split() for line in lines if line.startswith("agreement"))  # the student's only
    assert agreement[1] == "–" and 0 <= float(agreement[2]) <= 1


def test_bench_json(finished_run, capsys):
    run_dir, _ = finished_run
    capsys.readouterr()
    args = ["bench", *_checkpoints(run_dir), "bench.repeats=3", "bench.throughput_batch=8", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    report = json.loads((run_dir / "report.json").read_text())["models"]
    assert set(out) == {"teacher", "student"}
    assert out["teacher"]["params"] == report["teacher"]["params"]
    assert out["student"]["params"] == report["distilled"]["params"]
    assert all(v > 0 for k, v in out["student"].items() if k not in ("architecture", "latency_b1_iqr_ms"))


def test_eval_without_checkpoint_names_the_key(capsys):
    assert main(["eval"]) == 2
    err = capsys.readouterr().err
    assert "`teacher.checkpoint`" in err and "Traceback" not in err


def test_two_config_files_are_refused(tmp_path: Path, capsys):
    assert main(["eval", "a.yaml", "b.yaml"]) == 2
    assert "at most one config file" in capsys.readouterr().err


def test_train_teacher_from_a_yaml_file(tmp_path: Path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(
        f"name: t\noutput_dir: {tmp_path / 'runs'}\ndata: {{limit: 100}}\n"
        "teacher: {arch: mlp, kwargs: {hidden: [8]}, train: {epochs: 1}}\n"
        "student: {arch: mlp, kwargs: {hidden: [4]}}\n")
    assert main(["train-teacher", str(config), "--quiet"]) == 0
    weights = tmp_path / "runs" / "t" / "teacher" / "model.safetensors"
    assert str(weights) in capsys.readouterr().out
    assert weights.is_file()


def test_overrides_may_follow_flags(tmp_path: Path, capsys):
    # the override after --json is read: it names a missing file, which the config check reports
    assert main(["eval", "--json", f"teacher.checkpoint={tmp_path / 'absent.safetensors'}"]) == 2
    err = capsys.readouterr().err
    assert "`teacher.checkpoint`" in err and "does not exist" in err


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--jsn"])
    assert exc.value.code == 2
    assert "--jsn" in capsys.readouterr().err


def test_every_command_help_names_its_own_built_in_default_and_shows_an_example():
    from distill.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())
        assert f"example: distill {name}" in text, name
        if any(a.dest == "args" for a in parser._actions):
            assert "(default: " in text, name
    for name in ("lm", "lm-cache"):
        assert "KJV" in " ".join(commands[name].format_help().split())
    for name in ("textkd", "generate"):
        assert "BBC News" in " ".join(commands[name].format_help().split())
    assert "MNIST-5k" in " ".join(commands["run"].format_help().split())
    serve = " ".join(commands["serve"].format_help().split())  # options say their defaults
    assert "(default: 8000)" in serve and "(default: 512)" in serve and "(default: 8)" in serve
