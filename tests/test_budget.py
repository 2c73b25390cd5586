"""A budget nobody gave grows while validation accuracy still rises; a budget given never does."""

from __future__ import annotations

import json

import torch
from torch import nn

import distill
from distill.data.arrays import ArrayDataset
from distill.training import budget, config
from distill.training.budget import PATIENCE, fit_patiently, learning
from distill.training.engine import FitResult


def _rows(accuracies: list[float]) -> list[dict[str, float]]:
    return [{"step": 10 * (i + 1), "val_accuracy": a} for i, a in enumerate(accuracies)]


def test_learning_reads_the_middle_third_where_the_decayed_rate_has_not_flattened_the_curve():
    rising_then_flat = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.71, 0.71, 0.71]  # +30 points from 1/3 to 2/3, then flat
    assert learning(_rows(rising_then_flat), 500)
    assert not budget.still_improving(_rows(rising_then_flat), 500, "x")  # the last third alone says "done"
    assert not learning(_rows([0.2, 0.9, 0.9, 0.91, 0.9, 0.91, 0.9, 0.91, 0.91]), 500)  # converged early
    assert not learning(_rows(rising_then_flat), 2)  # on 2 validation examples a 30-point rise is noise
    assert not learning(_rows([0.2, 0.9]), 500)  # too few rows to say


def test_fit_patiently_continues_the_same_run_once_to_patience_times_the_steps():
    calls: list[tuple[int, bool]] = []
    histories = {100: _rows([0.2, 0.3, 0.4, 0.5, 0.6, 0.7]), 100 * PATIENCE: _rows([0.2, 0.3, 0.4, 0.5, 0.6, 0.8])}

    def fit_to(steps: int, resume: bool) -> FitResult:
        calls.append((steps, resume))
        return FitResult(model=nn.Identity(), history=histories[steps])

    out, notes, warned = fit_patiently(fit_to, 100, grow=True, n_val=1000, name="distilled")
    assert calls == [(100, False), (100 * PATIENCE, True)]
    assert notes == [f"distilled: trained {100 * PATIENCE} steps instead of the default 100: validation accuracy "
                     "was still rising as the default budget's learning rate decayed (give steps= or epochs= to fix the budget)."]
    assert out.history is histories[100 * PATIENCE] and warned  # still rising at the cap: a warning says so
    calls.clear()
    assert fit_patiently(fit_to, 100, grow=False, n_val=1000, name="x")[1] == [] and calls == [(100, False)]


def test_a_run_stopped_after_its_budget_grew_resumes_to_the_grown_budget():
    calls: list[tuple[int, bool]] = []
    killed = _rows([0.5] + [0.9] * 14)  # killed at step 150 of the grown 400
    assert not learning(killed, 1000)  # read afresh, its rows would not grow the budget again

    def fit_to(steps: int, resume: bool) -> FitResult:
        calls.append((steps, resume))
        return FitResult(model=nn.Identity(), history=killed)

    out, notes, _ = fit_patiently(fit_to, 100, grow=True, n_val=1000, name="distilled", resume=True)
    assert calls == [(100, True), (100 * PATIENCE, True)] and notes[0].startswith("distilled: trained 400 steps")


def _separable(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return ArrayDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def test_train_grows_a_default_budget_by_continuing_the_run_and_never_a_given_one(monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_EPOCHS", 1)
    monkeypatch.setattr(config, "DEFAULT_MIN_STEPS", 30)
    train, val = _separable(256, 0), _separable(1000, 1)
    torch.manual_seed(0)
    slow = dict(lr=1e-2, batch_size=32, eval_every=3, quiet=True)  # still learning after 30 steps
    grown = distill.train(nn.Linear(8, 2), train, val_data=val, **slow)
    steps = [r["step"] for r in grown.history]
    assert steps[-1] == 30 * PATIENCE and steps == sorted(set(steps))  # one run continued, not restarted
    assert grown.notes[0].startswith(f"model: trained {30 * PATIENCE} steps instead of the default 30")
    torch.manual_seed(0)
    given = distill.train(nn.Linear(8, 2), train, val_data=val, steps=30, **slow)
    assert given.history[-1]["step"] == 30 and given.notes[:1] != grown.notes[:1]
    assert [r["val_accuracy"] for r in given.history] == [r["val_accuracy"] for r in grown.history][:10]


def test_the_job_report_says_how_far_a_default_budget_grew(run_config, monkeypatch):
    from distill.recipes.classify.config import validate_config
    from distill.recipes.classify.pipeline import run

    monkeypatch.setattr(config, "DEFAULT_EPOCHS", 1)
    monkeypatch.setattr(config, "DEFAULT_MIN_STEPS", 30)
    run_config["train"] = {"batch_size": 16, "eval_every": 3, "optimizer": {"lr": 1e-3}}  # no budget: it may grow
    run_config["recipe"] = "soft_targets"
    torch.manual_seed(0)
    run_dir = run(validate_config(run_config))
    report = json.loads((run_dir / "report.json").read_text())
    ran = json.loads((run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert ran == 30 * PATIENCE and report["recipe"]["distilled_steps"] == ran  # what ran, not what was planned
    assert any(n.startswith(f"distilled: trained {ran} steps instead of the default 30")
               for n in report["recipe"]["budget_notes"])
    assert f"trained {ran} steps instead of the default 30" in (run_dir / "report.md").read_text()


def test_train_with_a_checkpoint_dir_leaves_the_users_other_folders_alone(tmp_path):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "notes.txt").write_text("the user's")
    torch.manual_seed(0)
    distill.train(nn.Linear(8, 2), _separable(64, 0), steps=4, batch_size=32, checkpoint_dir=tmp_path, quiet=True)
    assert (tmp_path / "baseline" / "notes.txt").read_text() == "the user's"
    assert (tmp_path / "last.safetensors").is_file()
