"""The `run` job end to end: stages, the teacher cache, resuming an interrupted stage, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import distill.recipes.classify.pipeline
from distill.core.config import validate_section
from distill.core.errors import ConfigError
from distill.core.rundir import open_run_dir
from distill.recipes.classify.config import validate_config
from distill.recipes.classify.pipeline import run, summarise
from distill.training.classify import ClassifierTask


def test_run_with_default_relative_paths_and_a_cached_teacher(run_config, in_tmp: Path):
    del run_config["output_dir"], run_config["teacher"]["cache_dir"]  # use the relative defaults
    run_dir = run(validate_config(run_config))
    assert run_dir == Path("runs") / "tiny"
    assert (in_tmp / "runs" / "tiny" / "report.md").is_file()
    manifests = list((in_tmp / "cache" / "teacher").glob("*/manifest.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["rows"] == 200  # the (limited) training split
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"] == {"name": "digits", "train": 200, "val": 179, "test": 359,
                                 "classes": [str(i) for i in range(10)], "unlabeled": 0}


class _Interrupt(Exception):
    pass


def test_an_interrupted_stage_resumes_and_finished_stages_are_skipped(run_config, monkeypatch):
    run_config["train"]["epochs"] = 2
    run_config["baseline"] = False
    run_config["pilot"] = {"share": 0}  # no paused pilot candidates: the distilled stage starts at step 0
    cfg = validate_config(run_config)
    real_epoch = ClassifierTask.begin_epoch

    def interrupt_distilled_epoch_2(self, epoch):
        if self.name == "distilled" and epoch == 1:
            raise _Interrupt
        return real_epoch(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(ClassifierTask, "begin_epoch", interrupt_distilled_epoch_2)
        with pytest.raises(_Interrupt):
            run(cfg)
    run_dir = Path(cfg.output_dir) / cfg.name
    teacher_weights = (run_dir / "teacher" / "model.safetensors").read_bytes()
    assert not (run_dir / "distilled" / "model.safetensors").exists()  # unfinished stage
    assert len((run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()) == 1

    trained = []

    def record_epochs(self, epoch):
        trained.append((self.name, epoch))
        return real_epoch(self, epoch)

    monkeypatch.setattr(ClassifierTask, "begin_epoch", record_epochs)
    run(cfg, resume=True)
    assert trained == [("distilled", 1)]  # teacher skipped, distilled continued from epoch 2
    assert (run_dir / "teacher" / "model.safetensors").read_bytes() == teacher_weights
    assert len((run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()) == 2
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "distilled"} and "gap_closed" not in report["summary"]


def test_teacher_checkpoint_is_loaded_not_trained(run_config, monkeypatch, tmp_path: Path):
    first = run(validate_config(run_config))
    run_config["name"] = "second"
    run_config["teacher"]["checkpoint"] = str(first / "teacher" / "model.safetensors")
    names = []
    real_fit = distill.recipes.classify.pipeline.fit
    monkeypatch.setattr(distill.recipes.classify.pipeline, "fit", lambda *a, **k: names.append(k["name"]) or real_fit(*a, **k))
    second = run(validate_config(run_config))
    assert names == ["baseline", "distilled"]
    a = json.loads((first / "report.json").read_text())["models"]["teacher"]
    b = json.loads((second / "report.json").read_text())["models"]["teacher"]
    assert a["accuracy"] == b["accuracy"] and a["per_class_accuracy"] == b["per_class_accuracy"]


def test_summary_ratios():
    models = {
        "teacher": {"params": 1000, "latency_b1_p50_ms": 4.0, "throughput": 100.0, "accuracy": 0.9},
        "baseline": {"params": 100, "latency_b1_p50_ms": 1.0, "throughput": 400.0, "accuracy": 0.7},
        "distilled": {"params": 100, "latency_b1_p50_ms": 1.0, "throughput": 400.0, "accuracy": 0.85},
    }
    s = summarise(models)
    assert s == pytest.approx({"compression": 10.0, "speedup_b1": 4.0, "throughput_ratio": 4.0,
                               "retention": 0.85 / 0.9, "gap_closed": 0.75})
    models["baseline"]["accuracy"] = 0.95  # no gap to close
    assert summarise(models)["gap_closed"] != summarise(models)["gap_closed"]  # NaN


@pytest.mark.slow
def test_distillation_quality_on_full_digits(run_config):
    """The product claim at small scale: a distilled MLP tracks a CNN teacher on digits."""
    run_config["data"] = {"name": "digits"}
    run_config["teacher"].update(kwargs={"widths": [16, 32], "fc": 64}, signal="live",
                                 train={"epochs": 10, "batch_size": 64, "optimizer": {"lr": 0.003},
                                        "augment": {"shift": 1}})
    run_config["student"]["kwargs"] = {"hidden": [32]}
    run_config["train"] = {"epochs": 30, "batch_size": 64, "optimizer": {"lr": 0.01}, "augment": {"shift": 1}}
    run_dir = run(validate_config(run_config))
    models = json.loads((run_dir / "report.json").read_text())["models"]
    assert models["teacher"]["accuracy"] > 0.95
    assert models["distilled"]["accuracy"] > 0.85
    assert models["distilled"]["agreement"] > 0.85
    assert models["distilled"]["params"] * 5 < models["teacher"]["params"]


def test_resume_accepts_a_run_saved_before_settings_were_added(run_config):
    """A run written by an older version lacks keys added since; at their defaults they match."""
    cfg = validate_config(run_config)
    run_dir = open_run_dir(cfg, resume=False)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["report_to"], saved["train"]["grad_clip"]  # as if these settings did not exist yet
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (run_dir / "request.yaml").unlink()  # nor the request beside the config that ran
    assert open_run_dir(cfg, resume=True) == run_dir
    changed = validate_config({**run_config, "train": {**run_config["train"], "batch_size": 7}})
    with pytest.raises(ConfigError, match="differs .*sections: train"):
        open_run_dir(changed, resume=True)


def test_lm_and_textkd_runs_saved_before_settings_were_added_resume_too(tmp_path):
    """Their saved configs are filled in by their own schemas, not the classic one."""
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.textkd.config import load_textkd_config

    for cfg, dropped in ((load_lm_config(None, [f"output_dir={tmp_path}"]), ("on_policy", "start")),
                         (load_textkd_config(None, [f"output_dir={tmp_path}"]), ("data", "unlabeled_path"))):
        run_dir = open_run_dir(cfg, resume=False)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        del saved[dropped[0]][dropped[1]]  # as if the setting did not exist when the run started
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
        assert open_run_dir(cfg, resume=True) == run_dir
        changed = cfg.model_copy(update={"seeds": [5]} if hasattr(cfg, "seeds") else {"baseline": False})
        with pytest.raises(ConfigError, match="differs"):
            open_run_dir(changed, resume=True)


@pytest.mark.parametrize("student", [{"arch": "nosuch"}, {"arch": "mlp", "kwargs": {"bogus": 3}},
                                     {"from_teacher": {"path": "no.such.layers", "every": 2}}])
def test_a_student_that_cannot_be_built_is_refused_before_any_compute_and_writes_nothing(run_config, student):
    from distill.core.errors import DistillError

    cfg = validate_config({**run_config, "student": student})
    with pytest.raises(DistillError) as info:
        run(cfg)
    assert any(word in str(info.value) for word in ("nosuch", "bogus", "no.such.layers"))
    assert not (Path(run_config["output_dir"]) / "tiny").exists()  # so the corrected command starts clean
    assert run(validate_config(run_config)).is_dir()


def _rename_back(saved: dict, old_names: dict[str, str]) -> dict:
    """`saved` as an earlier version wrote it: each new key (dotted) moved back under its old name."""
    for new, old in old_names.items():
        *parents, leaf = new.split(".")
        node = saved
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = node.pop(leaf)
        *old_parents, old_leaf = old.split(".")
        target = saved
        for part in old_parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[old_leaf] = {**value, **target[old_leaf]} if isinstance(target.get(old_leaf), dict) else value
    return saved


def test_runs_saved_under_old_key_names_resume_and_old_names_in_a_config_are_refused(run_config, tmp_path):
    """One name per concept: `kd.alpha`, `loss.*` (lm) and `logit_*` (textkd) became `kd.*`."""
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.textkd.config import load_textkd_config

    classic = validate_config({**run_config, "kd": {"ratio": 0.7}})
    lm = load_lm_config(None, [f"output_dir={tmp_path}", "kd.divergence=jsd", "kd.jsd_beta=0.3"])
    textkd = load_textkd_config(None, [f"output_dir={tmp_path}", "kd.ratio=0.4"])
    cases = [(classic, {"kd.ratio": "kd.alpha"}),
             (lm, {"kd.divergence": "loss.kind", "kd.jsd_beta": "loss.beta", "kd.skew": "loss.alpha", "kd": "loss"}),
             (textkd, {"kd.divergence": "logit_loss", "kd.ratio": "logit_ratio"})]
    for cfg, old_names in cases:
        run_dir = open_run_dir(cfg, resume=False)
        saved = _rename_back(yaml.safe_load((run_dir / "config.yaml").read_text()), old_names)
        if "kd" in saved and cfg is textkd:
            saved.pop("kd")  # textkd had no kd section: its other settings were not configurable
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
        assert open_run_dir(cfg, resume=True) == run_dir  # the old names are read as the new ones
        old = _rename_back(cfg.model_dump(mode="json"), old_names)
        with pytest.raises(ConfigError, match=f"`{list(old_names.values())[0]}` is now "
                                              f"`{list(old_names)[0]}` \\(same meaning\\): rename it"):
            validate_section(type(cfg), old, "config")
    dkd = {**run_config, "losses": [{"kind": "dkd", "alpha": 1.0, "beta": 4.0}]}
    with pytest.raises(ConfigError, match=r"`losses.0.alpha` is now `losses.0.tckd_weight`[\s\S]*"
                                          r"`losses.0.beta` is now `losses.0.nckd_weight`"):
        validate_config(dkd)


def test_a_finished_run_keeps_weights_and_metrics_but_not_training_state_unless_asked(run_config, tmp_path):
    run_config["train"]["epochs"] = 1
    run_dir = run(validate_config(run_config))
    stages = ("teacher", "baseline", "distilled")
    for stage in stages:
        assert sorted(p.name for p in (run_dir / stage).glob("*.safetensors")) == ["model.safetensors"]
        assert (run_dir / stage / "metrics.jsonl").is_file()
    kept = run(validate_config({**run_config, "name": "kept", "keep_state": True}))
    for stage in stages:
        assert {"last.safetensors", "best.safetensors"} <= {p.name for p in (kept / stage).glob("*.safetensors")}
    # finished stages found on a resume (as after a kill between a stage's weights and dropping its
    # state) drop it too; keep_state may change on resume
    run(validate_config({**run_config, "name": "kept"}), resume=True)
    assert not (kept / "distilled" / "last.safetensors").exists()
