"""Config: validated before any compute, with errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.core.errors import ConfigError
from distill.recipes.classify.config import (
    RunConfig,
    default_config_dict,
    load_config,
    validate_config,
)


def test_builtin_default_validates():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.name == "mnist5k"
    assert cfg.teacher.arch == "cnn" and cfg.student.arch == "mlp"
    assert cfg.teacher.train.optimizer.lr == pytest.approx(0.003)


def test_unknown_key_names_it_and_the_nearest_valid_key():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["kd.temprature=3"])
    assert "kd.temprature" in str(exc.value)
    assert "Did you mean `temperature`" in str(exc.value)


def test_nested_unknown_key_is_found_deep_in_the_tree():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["teacher.train.optimizer.lrr=0.1"])
    assert "teacher.train.optimizer.lrr" in str(exc.value)
    assert "`lr`" in str(exc.value)


def test_wrong_type_names_the_key_and_the_value():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["train.epochs=many"])
    assert "train.epochs" in str(exc.value)
    assert "'many'" in str(exc.value)


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError, match="train.optimizer.lr"):
        load_config(overrides=["train.optimizer.lr=0"])


def test_missing_checkpoint_file_names_the_key(tmp_path: Path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[f"teacher.checkpoint={missing}"])
    assert "`teacher.checkpoint`" in str(exc.value)
    assert str(missing) in str(exc.value)


def test_existing_checkpoint_file_is_accepted(tmp_path: Path):
    ckpt = tmp_path / "t.safetensors"
    ckpt.write_bytes(b"")
    assert load_config(overrides=[f"teacher.checkpoint={ckpt}"]).teacher.checkpoint == ckpt


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(overrides=["train.epochs=3", "student.kwargs.hidden=[16,8]", "kd.ratio=0.5",
                                 "name=exp1", "train.grad_clip="])
    assert cfg.train.epochs == 3
    assert cfg.student.kwargs["hidden"] == [16, 8]
    assert cfg.kd.ratio == 0.5
    assert cfg.name == "exp1"
    assert cfg.train.grad_clip is None
    # untouched keys keep the file's values
    assert cfg.teacher.train.epochs == default_config_dict()["teacher"]["train"]["epochs"]


def test_override_can_set_a_schedule():
    cfg = load_config(overrides=["kd.temperature={start: 1, end: 4, kind: cosine}"])
    assert cfg.kd.temperature.start == 1 and cfg.kd.temperature.kind == "cosine"


@pytest.mark.parametrize("item", ["train.epochs", "=3", "train.epochs.x=3"])
def test_malformed_override_is_a_config_error(item):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[item])
    assert item in str(exc.value)


def test_mixup_with_cached_teacher_is_rejected():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["teacher.signal=cached", "train.augment.mixup=0.2"])
    assert "teacher.signal=live" in str(exc.value)
    assert load_config(overrides=["teacher.signal=live", "train.augment.mixup=0.2"]).train.augment.mixup == 0.2


def test_csv_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(overrides=["data.name=csv"])


def test_yaml_file_is_read_and_overridden(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("teacher: {arch: mlp}\nstudent: {arch: mlp, kwargs: {hidden: [4]}}\ntrain: {epochs: 2}\n")
    cfg = load_config(path, ["train.epochs=5"])
    assert cfg.teacher.arch == "mlp" and cfg.student.kwargs == {"hidden": [4]}
    assert cfg.train.epochs == 5


def test_yaml_file_missing_required_key(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("teacher: {arch: mlp}\n")
    with pytest.raises(ConfigError, match="`student`: required key is missing"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_validate_config_reports_every_error_at_once():
    raw = default_config_dict()
    raw["train"]["epochs"] = 0
    raw.setdefault("kd", {})["alhpa"] = 0.5
    with pytest.raises(ConfigError) as exc:
        validate_config(raw, source="job.yaml")
    msg = str(exc.value)
    assert "job.yaml" in msg and "train.epochs" in msg and "kd.alhpa" in msg


def test_an_invalid_value_from_an_override_names_the_override_not_only_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 3}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, ["kd.ratio=1.5"])
    assert str(cfg) in str(exc.value) and "set by the command-line override `kd.ratio=1.5`" in str(exc.value)
    cfg.write_text("kd: {alpha: 1.5}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, ["train.epochs=4"])
    assert "override" not in str(exc.value)  # the file's own value: the file is to blame


def test_kd_settings_beside_a_losses_list_are_refused_not_ignored():
    with pytest.raises(ConfigError, match=r"the kd section \(kd.temperature\) and a losses list are both given"):
        load_config(None, ["kd.temperature=4", "losses=[{kind: ce}]"])
    with pytest.raises(ConfigError, match=r"kd section \(kd.divergence, kd.ratio\) and a losses list"):
        load_config(None, ["kd.divergence=reverse_kl", "kd.ratio=0.5", "losses=[{kind: ce}]"])
    assert load_config(None, ["losses=[{kind: ce}]"]).losses  # a losses list alone is the method
    assert load_config(None, ["kd.temperature=4"]).kd.temperature == 4  # and so is the kd section alone


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_with_the_current_key_names(path, monkeypatch):
    """The example configs use today's keys (a renamed key in one of them is refused, naming the new one)."""
    from distill.recipes.search import base_raw, load_search_config

    monkeypatch.chdir(path.parent.parent)  # search configs name their base run config relative to the repository
    if "base:" in path.read_text():
        validate_config(base_raw(load_search_config(path)))
    else:
        assert load_config(path).name == path.stem
