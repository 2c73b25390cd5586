"""`report_to`: every job's training stages logged to TensorBoard, MLflow and W&B, all offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.core.errors import ConfigError
from distill.training import tracking
from distill.training.tracking import check_report_to

pytest.importorskip("mlflow")
pytest.importorskip("wandb")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # anything a tracker writes outside the run directory would land here


def _mlflow_runs(db: Path, experiment: str) -> dict[str, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return {r.info.run_name: r.data.metrics for r in client.search_runs([found.experiment_id])}


def test_a_classifier_job_logs_every_stage_to_all_three_trackers(run_config, offline, tmp_path):
    import distill

    run_config["report_to"] = ["tensorboard", "mlflow", "wandb"]
    run_dir = distill.run(run_config).run_dir
    logs = run_dir / "tracking"
    second = distill.run({**run_config, "name": "again", "report_to": ["mlflow"]}).run_dir  # its own database
    assert set(_mlflow_runs(second / "tracking" / "mlflow.db", "again")) == {"teacher", "baseline", "distilled"}
    for stage in ("teacher", "baseline", "distilled"):
        assert list((logs / stage).rglob("events.out.tfevents.*")), stage
    runs = _mlflow_runs(logs / "mlflow.db", "tiny")
    assert {"teacher", "baseline", "distilled"} <= set(runs)
    assert "val_accuracy" in runs["distilled"] and 0 <= runs["distilled"]["val_accuracy"] <= 1
    offline_runs = list((logs / "wandb").glob("offline-run-*"))
    assert len(offline_runs) >= 3 and all(list(r.glob("*.wandb")) for r in offline_runs)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "wandb").exists()  # nothing outside the run


def test_an_lm_fit_logs_its_metrics(offline, tmp_path):
    from lm_helpers import TEXT, make_llama, make_tokenizer

    from distill.data.tokens import pack_text
    from distill.losses.config import TokenKDConfig
    from distill.training.lm import LMTrainConfig, fit_lm

    tok = make_tokenizer(tmp_path / "tok")
    model = make_llama(tmp_path / "m", tok, layers=1)
    blocks = pack_text([TEXT] * 4, tok, seq_len=16)
    fit_lm(model, blocks, train=LMTrainConfig(steps=4, batch_size=2, eval_every=2, warmup_steps=0),
           kd=TokenKDConfig(ratio=0.0), vocab=len(tok), val_data=blocks, checkpoint_dir=tmp_path / "run" / "baseline",
           device="cpu", quiet=True, name="baseline", tracking=["mlflow"], project="my-lm")
    runs = _mlflow_runs(tmp_path / "run" / "tracking" / "mlflow.db", "my-lm")
    assert "val_ppl" in runs["baseline"] and "train_loss" in runs["baseline"]


def test_a_tracker_that_cannot_log_is_refused_before_any_compute(run_config, monkeypatch, tmp_path):
    import distill

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    run_config["report_to"] = ["wandb"]
    with pytest.raises(ConfigError, match="wandb has no login.*WANDB_MODE=offline"):
        distill.run(run_config)
    assert not (Path(run_config["output_dir"]) / "tiny").exists()  # refused before the run directory

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda m: None if m == "alembic" else real(m))
    with pytest.raises(ConfigError, match=r"mlflow needs alembic — pip install 'distill\[mlflow\]'"):
        check_report_to(["mlflow"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server: no local database needed
    check_report_to(["mlflow"])


def test_the_old_key_tracking_is_refused_naming_report_to(run_config):
    import distill

    run_config["tracking"] = ["tensorboard"]
    with pytest.raises(ConfigError, match="report_to"):
        distill.run(run_config)
