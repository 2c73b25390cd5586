"""What a hostile file, config or network peer cannot make distill do.

Each payload would create a marker file if it ran; every test checks the marker is absent. The
server's key checks on live requests are in tests/test_serve.py
(`test_the_api_key_is_required_except_for_health`, `test_cli_reads_the_key_from_a_file`); the
OpenAI client's use of a key file in tests/test_textkd_remote.py.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import stat
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import distill
import distill.core.files
from distill.compress import quantize
from distill.core.checkpoint import load_weights, save_weights
from distill.core.errors import CheckpointError, ConfigError, DistillError, ModelError
from distill.core.files import atomic_save_tensors, atomic_write_bytes, make_private_dir
from distill.core.rundir import open_run_dir
from distill.models.config import ModelConfig
from distill.models.zoo import build_model
from distill.recipes.classify.config import load_config, validate_config
from distill.recipes.classify.pipeline import run
from distill.recipes.textkd.config import load_textkd_config
from distill.serve import server as serve
from distill.teachers.remote import OpenAITeacher
from distill.teachers.signals import CachedTeacher

KEY = "sk-SECRET-do-not-print-0123"


class Payload:
    """Unpickling this creates `marker`: the proof that a file was unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_pickle(path: Path, marker: Path, how: str) -> Path:
    """A malicious file: torch.save's zip format, or a bare pickle (the legacy .bin format)."""
    if how == "torch.save":
        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))
    return path


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(("name", "how"), [("model.safetensors", "pickle"), ("model.pt", "torch.save"),
                                           ("pytorch_model.bin", "pickle")])
def test_load_weights_refuses_a_pickle_without_running_it(tmp_path, name, how):
    marker = tmp_path / "MARKER"
    path = write_pickle(tmp_path / name, marker, how)
    with pytest.raises(CheckpointError) as info:
        load_weights(path, nn.Linear(2, 2))
    message = str(info.value)
    assert f"{path} is not a safetensors file" in message and "never unpickles" in message
    assert "weights_only=True" in message and "save_file" in message  # how to convert a trusted one
    assert not marker.exists()


def test_the_conversion_the_error_gives_works_on_a_trusted_state_dict(tmp_path):
    model = nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "trusted.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(tmp_path / "trusted.pt", nn.Linear(3, 2))
    command = str(info.value).split("python -c ")[1].strip('"')
    exec(command)  # the one-liner the user is told to run
    other = nn.Linear(3, 2)
    load_weights(tmp_path / "trusted.safetensors", other)
    assert torch.equal(other.weight, model.weight)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_load_int8_refuses_objects_weights_only_rejects(tmp_path, how):
    marker = tmp_path / "MARKER"
    path = write_pickle(tmp_path / "int8.pt", marker, how)
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError) as info:
        quantize.load_int8(model, path, method="dynamic", example=torch.randn(2, 4))
    message = str(info.value)
    assert "not a distill int8 checkpoint" in message and "weights_only" in message
    assert "weights_only=False" not in message  # torch's own advice would run the payload
    assert not marker.exists()


def test_load_int8_refuses_garbage_and_a_non_dict(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    buffer = io.BytesIO()
    torch.save([torch.zeros(2)], buffer)
    (tmp_path / "list.pt").write_bytes(buffer.getvalue())
    for name, words in (("junk.pt", "not a distill int8 checkpoint"), ("list.pt", "holds a list")):
        with pytest.raises(CheckpointError, match=words):
            quantize.load_int8(nn.Linear(4, 3), tmp_path / name, method="dynamic", example=torch.randn(2, 4))


def test_save_int8_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "int8.pt"
    quantize.save_int8(nn.Linear(4, 3), path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("killed mid-write")

    monkeypatch.setattr(distill.core.files.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        quantize.save_int8(nn.Linear(4, 3), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["int8.pt"]


@pytest.mark.parametrize("key", ["teacher", "student"])
def test_a_pickle_as_a_run_checkpoint_is_refused_before_training(run_config, digits, tmp_path, key):
    marker = tmp_path / "MARKER"
    evil = write_pickle(tmp_path / "evil.safetensors", marker, "pickle")
    teacher = build_model(ModelConfig(arch="cnn", kwargs={"widths": [4], "fc": 16}), digits.input_shape, 10)
    save_weights(tmp_path / "teacher.safetensors", teacher)
    run_config["teacher"]["checkpoint"] = str(evil if key == "teacher" else tmp_path / "teacher.safetensors")
    if key == "student":
        run_config["student"]["checkpoint"] = str(evil)
    with pytest.raises(CheckpointError, match="evil.safetensors is not a safetensors file"):
        run(validate_config(run_config))
    assert not marker.exists()
    assert not (tmp_path / "runs" / "tiny" / "baseline" / "last.safetensors").exists()  # nothing trained


def test_hugging_face_models_load_only_from_safetensors(tmp_path):
    pytest.importorskip("transformers")
    from lm_helpers import make_llama, make_tokenizer

    from distill.models.causal_lm import load_causal_lm

    directory = tmp_path / "llama"
    make_llama(directory, make_tokenizer(directory), layers=1)
    assert isinstance(load_causal_lm(str(directory)), nn.Module)  # safetensors: loads as before
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "MARKER"
    write_pickle(directory / "pytorch_model.bin", marker, "torch.save")
    with pytest.raises(ModelError) as info:
        load_causal_lm(str(directory), key="student.model")
    message = str(info.value)
    assert "`student.model`" in message and "no safetensors weights" in message and "save_pretrained" in message
    assert not marker.exists()


def test_no_code_enables_remote_code_from_the_hub():
    """No call in the package passes `trust_remote_code` (the exported classifier's card and docstring
    tell users how to load it; distill itself loads it with its own class)."""
    import ast

    calls = []
    for path in Path(distill.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and any(k.arg == "trust_remote_code" for k in node.keywords):
                calls.append(f"{path.name}:{node.lineno}")
    assert calls == []


# --------------------------------------------------------------------------- configs


YAML_PAYLOAD = '!!python/object/apply:os.system ["touch {marker}"]'


def test_yaml_tags_cannot_run_code(tmp_path):
    marker = tmp_path / "MARKER"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: {YAML_PAYLOAD.format(marker=marker)}\n")
    for load in (load_config, load_textkd_config):
        with pytest.raises(ConfigError, match="not valid YAML"):
            load(config)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, [f"name={YAML_PAYLOAD.format(marker=marker)}"])
    assert not marker.exists()


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module on sys.path that creates MARKER when it is imported."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil_models_for_test.py").write_text(textwrap.dedent(f"""
        import pathlib
        from torch import nn
        pathlib.Path({str(marker)!r}).touch()
        Net = nn.Linear
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_models_for_test", raising=False)
    return marker


@pytest.mark.parametrize("arch", ["evil_models_for_test", "evil_models_for_test.Net"])
def test_only_the_explicit_module_colon_class_form_imports_anything(evil_module, arch):
    with pytest.raises(ModelError, match="Unknown model arch"):
        build_model(ModelConfig(arch=arch), (4,), 2)
    assert not evil_module.exists()
    build_model(ModelConfig(arch="evil_models_for_test:Net", kwargs={"in_features": 4, "out_features": 2}), (4,), 2)
    assert evil_module.exists()  # the documented way: the user's own module, named explicitly


@pytest.mark.parametrize(("arch", "kwargs", "words"), [
    ("os:system", {"command": "touch {marker}"}, "names a builtin_function_or_method"),
    ("subprocess:Popen", {"args": ["touch", "{marker}"]}, "names a class Popen"),
    ("math:pi", {}, "names a float"),
])
def test_arch_must_name_a_model_before_anything_is_called(tmp_path, arch, kwargs, words):
    marker = tmp_path / "MARKER"
    filled = {k: [a.format(marker=marker) for a in v] if isinstance(v, list) else v.format(marker=marker)
              for k, v in kwargs.items()}
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(arch=arch, kwargs=filled), (4,), 2)
    assert words in str(info.value) and "nn.Module" in str(info.value)
    assert not marker.exists()


def test_a_factory_returning_something_else_is_a_clear_error():
    with pytest.raises(ModelError, match=r"`json:loads` returned a dict, not a torch.nn.Module"):
        build_model(ModelConfig(arch="json:loads", kwargs={"s": "{}"}), (4,), 2)


# --------------------------------------------------------------------------- keys


def key_file(tmp_path: Path, text: str = f"  {KEY}\n", mode: int = 0o600) -> Path:
    path = tmp_path / "api_key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_key_file_replaces_the_default_variable_and_never_reaches_the_run_dir(tmp_path):
    path = key_file(tmp_path)
    cfg = load_textkd_config(None, [f"teacher.api_key_file={path}", f"output_dir={tmp_path / 'runs'}", "device=cpu"])
    assert cfg.teacher.api_key_env is None and cfg.teacher.api_key_file == path
    run_dir = open_run_dir(cfg, resume=False)  # type: ignore[arg-type]  (as run_textkd calls it)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["teacher"]["api_key_file"] == str(path)
    assert all(KEY not in p.read_text() for p in run_dir.rglob("*") if p.is_file())


def test_both_key_sources_are_an_error(tmp_path):
    path = key_file(tmp_path)
    with pytest.raises(ConfigError, match=r"`teacher.api_key_env` and `teacher.api_key_file` are both set"):
        load_textkd_config(None, [f"teacher.api_key_file={path}", "teacher.api_key_env=MY_KEY"])
    with pytest.raises(ConfigError, match="`api_key_env` and `api_key_file` are both set"):
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_env="MY_KEY", api_key_file=path)
    with pytest.raises(ConfigError, match="`--api-key-env` and `--api-key-file` are both set"):
        serve.run("unused", host="127.0.0.1", port=0, api_key_env="MY_KEY", api_key_file=path)


def test_the_client_reads_the_key_file_stripped_and_keeps_it_out_of_repr(tmp_path):
    path = key_file(tmp_path)
    teacher = OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_file=path)  # default variable dropped
    assert teacher.api_key_env is None and teacher._key() == KEY
    assert KEY not in repr(teacher) and KEY not in str(teacher.identity)


@pytest.mark.parametrize(("text", "words"), [(None, "does not exist"), (" \n", "is empty"),
                                             (b"\xff\xfe" + KEY.encode(), "cannot read")])
def test_a_bad_key_file_names_the_path_and_the_fix_never_the_content(tmp_path, text, words):
    path = tmp_path / "api_key"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    if path.exists():
        path.chmod(0o600)
    for make in (lambda: OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_file=path),
                 lambda: serve.run("unused", host="127.0.0.1", port=0, api_key_file=path)):
        with pytest.raises(ConfigError) as info:
            make()
        message = str(info.value)
        assert words in message and str(path) in message and KEY not in message


def test_a_key_file_others_can_read_is_warned_about(tmp_path):
    if os.name == "nt":
        pytest.skip("no Unix permissions")
    path = key_file(tmp_path, mode=0o644)
    with pytest.warns(UserWarning, match=rf"readable by other users.*chmod 600 {path}"):
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_file=path)
    path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_file=path)


def test_the_server_reads_its_key_from_a_file(tmp_path):
    assert serve._server_key(None, key_file(tmp_path)) == KEY
    assert serve._server_key(None, None) is None


def test_the_server_refuses_an_open_address_without_a_key():
    with pytest.raises(DistillError, match=r"Refusing to serve on 0.0.0.0.*--api-key-file"):
        serve.make_server("no/such/model", host="0.0.0.0", port=0)  # refused before anything loads


# --------------------------------------------------------------------------- files


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(distill.core.files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(distill.core.files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(3)}, {})
    assert events == ["fsync", "replace", "fsync"]
    events.clear()
    atomic_write_bytes(tmp_path / "b.bin", b"data")
    assert events == ["fsync", "replace", "fsync"]
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.ones(3))


def test_a_directory_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def no_dir_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(distill.core.files.os, "fsync", no_dir_fsync)
    atomic_write_bytes(tmp_path / "b.bin", b"data")
    assert (tmp_path / "b.bin").read_bytes() == b"data"


def test_private_dirs_are_0o700_and_existing_ones_keep_their_mode(tmp_path):
    made = make_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    make_private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750


def test_writing_into_a_world_writable_directory_warns_with_the_fix(tmp_path):
    if os.name == "nt":
        pytest.skip("no Unix permissions")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.warns(UserWarning, match=rf"{open_dir} is writable by every user.*chmod o-w {open_dir}"):
        make_private_dir(open_dir / "run")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others cannot touch what is not theirs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_private_dir(sticky / "run")


def test_a_run_directory_and_a_teacher_cache_are_private(run_config, digits, tmp_path):
    run_dir = open_run_dir(validate_config(run_config), resume=False)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    saved = run_dir / "config.yaml"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~_umask()  # files keep the usual mode
    teacher = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [4]}), digits.input_shape, 10)
    cache = CachedTeacher.build_or_load(teacher, digits.train, tmp_path / "cache", quiet=True)
    assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
