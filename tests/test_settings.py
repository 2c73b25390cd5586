"""`distill config JOB`: every key of a job's schema, with the value the config runs with."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.recipes.settings import job_config, settings, type_name


@pytest.mark.parametrize("job", ["run", "lm", "textkd", "task"])
def test_every_setting_of_a_built_in_job_is_listed_with_the_value_it_runs_with(job):
    cfg = job_config(job, None, [])
    rows = {r.key: r for r in settings(cfg)}
    dumped = cfg.model_dump(mode="json")
    for key, row in rows.items():
        if not row.active or "[]" in key:
            continue
        value = dumped
        for part in key.split("."):
            value = value[part]
        assert row.value == value, key  # what the job would run with, not the schema's default
    assert {"name", "output_dir", "device"} <= set(rows) and len(rows) > 60


def test_an_override_shows_in_the_listing_and_a_section_that_is_off_still_lists_its_keys():
    rows = {r.key: r for r in settings(job_config("task", None, ["train.steps=7", "teacher.finetune=null"]))}
    assert rows["train.steps"].value == 7 and rows["train.steps"].type == "int ≥ 1"
    assert rows["teacher.finetune"].value is None and rows["teacher.finetune"].type == "section | null"
    off = rows["teacher.finetune.steps"]
    assert not off.active and off.value == 200  # the schema's default, taken when the section is given


def test_types_read_with_their_choices_and_bounds():
    from typing import Literal

    from annotated_types import Ge, Lt

    assert type_name(Literal["a", "b"]) == "a | b"
    assert type_name(float | None, [Ge(0), Lt(1)]) == "float | null ≥ 0, < 1"
    assert type_name(list[int]) == "list[int]"


def test_the_config_command_prints_a_job_and_the_version(capsys):
    assert main(["config", "task", "train.steps=9", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["train.steps"]["value"] == 9 and rows["kd.divergence"]["meaning"]
    assert main(["config", "run"]) == 0
    text = capsys.readouterr().out
    assert "\ntrain.epochs = " in text and "settings" in text.splitlines()[0]
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("distill 0.1")
    assert main(["config", "search"]) == 2  # a search has no built-in job: said, not a traceback


@pytest.mark.parametrize("job,source", [("run", None), ("lm", None), ("textkd", None), ("task", None),
                                        ("search", "configs/search_fmnist.yaml")])
def test_every_key_of_every_job_says_what_it_means(job, source):
    rows = settings(job_config(job, source, []))
    sections = ("section | null", "list of sections")
    assert [r.key for r in rows if not r.meaning and r.type not in sections] == []
