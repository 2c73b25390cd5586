"""`--smoke`: each job's small budget, applied between the config file and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.recipes.settings import job_config
from distill.recipes.smoke import SMOKE, search_smoke, smoke_overrides

SCHEMA_OF = {"run": "run", "train-teacher": "run", "prune": "run", "quantize": "run", "lm": "lm", "lm-cache": "lm",
             "textkd": "textkd", "generate": "textkd", "task": "task", "search": "search"}
SEARCH = str(Path(__file__).parents[1] / "configs" / "search_fmnist.yaml")


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_every_smoke_budget_names_keys_of_its_job_and_sets_them(command):
    job = SCHEMA_OF[command]
    source = SEARCH if job == "search" else None
    cfg = job_config(job, source, smoke_overrides(command, []))  # an unknown key or a bad value raises
    dumped = cfg.model_dump(mode="json")
    for override in SMOKE[command]:
        key, value = override.split("=", 1)
        got = dumped
        for part in key.split("."):
            got = got[part]
        assert str(got).lower() == value.lower() or (got is None and value == "null"), override


def test_a_smoke_search_gives_every_candidate_the_classifier_budget_after_its_own_overrides():
    cfg = job_config("search", SEARCH, smoke_overrides("search", []))
    overrides = search_smoke(cfg.overrides)
    assert overrides[: len(cfg.overrides)] == cfg.overrides and overrides[len(cfg.overrides):] == SMOKE["run"]
    run_cfg = job_config("run", cfg.base and str(cfg.base), overrides)
    assert run_cfg.train.steps == 60 and run_cfg.train.epochs is None  # the search's epochs give way to steps


def test_smoke_run_finishes_every_stage_in_its_own_run_and_a_typed_override_wins(tmp_path, capsys):
    assert main(["run", "--smoke", f"output_dir={tmp_path}", "train.steps=30", "--quiet"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "default-smoke"
    assert (run_dir / "report.md").is_file() and "no verdict" in out and str(run_dir / "report.md") in out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["steps"] == 30  # typed on the command line: wins over the smoke budget's 60
    assert saved["teacher"]["train"]["steps"] == 40 and saved["data"]["limit"] == 2000
    assert not (tmp_path / "default").exists()


def test_the_config_listing_shows_a_smoke_budget(capsys):
    assert main(["config", "lm", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "data.max_blocks = 32" in out and "train.steps = 8" in out


def test_a_smoke_budget_never_turns_on_a_stage_the_config_leaves_off(capsys):
    assert main(["config", "lm", "--smoke", "teacher.adapt=null"]) == 0
    out = capsys.readouterr().out
    assert "teacher.adapt = null" in out and "train.steps = 8" in out
