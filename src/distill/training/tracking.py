"""Experiment tracking (`report_to`: tensorboard, mlflow, wandb) through Accelerate's trackers.

Every job logs each training stage (teacher, baseline, distilled, an arm and seed...) as one run of
the job: TensorBoard event files under RUN_DIR/tracking/STAGE; MLflow runs named after the stage in
the experiment named after the job, in MLFLOW_TRACKING_URI or else RUN_DIR/tracking/mlflow.db
(`mlflow ui --backend-store-uri sqlite:///RUN_DIR/tracking/mlflow.db`); W&B runs named after the stage
in the project named after the job, files under RUN_DIR/tracking/wandb (WANDB_MODE=offline keeps them
there for a later `wandb sync`). What each tracker needs is checked when the job starts, before any
compute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError

NEEDS = {"tensorboard": (["tensorboard"], "tensorboard"), "mlflow": (["mlflow", "sqlalchemy", "alembic"], "mlflow"),
         "wandb": (["wandb"], "wandb")}


def check_report_to(report_to: list[str], key: str = "report_to") -> None:
    """Refuse, before any compute, a tracker whose package or login is missing."""
    for name in report_to:
        modules, extra = NEEDS[name]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if name == "mlflow" and _user_mlflow_uri():  # a server or store of the user's
            missing = [m for m in missing if m == "mlflow"]
        if missing:
            raise ConfigError(f"`{key}`: {name} needs {', '.join(missing)} — pip install 'distill[{extra}]', "
                              f"or drop {name} from {key}.")
        if name == "wandb" and not _wandb_ready():
            raise ConfigError(f"`{key}`: wandb has no login on this machine: run `wandb login` or set "
                              "WANDB_API_KEY, or set WANDB_MODE=offline to write the runs under "
                              "RUN/tracking/wandb (`wandb sync` uploads them later).")


_OUR_URIS: set[str] = set()  # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: ours are not the user's


def _user_mlflow_uri() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri not in _OUR_URIS else None


def _wandb_ready() -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def flat_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: what the trackers show as a stage's parameters."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trackers(report_to: list[str], project: str, stage: str, directory: Path) -> list[Any]:
    """Accelerate tracker objects for one stage (started by `Accelerator.init_trackers`). A stage that
    trains again (its budget extended, the job resumed) logs on in its earlier MLflow or W&B run."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    key = str((directory / stage).resolve())  # one tracker run per stage of a run directory, however often it trains
    out: list[Any] = []
    for name in report_to:
        if name == "tensorboard":
            out.append(TensorBoardTracker(stage, directory))
        elif name == "mlflow":
            import mlflow

            if not _user_mlflow_uri():
                directory.mkdir(parents=True, exist_ok=True)
                _OUR_URIS.add(uri := f"sqlite:///{(directory / 'mlflow.db').resolve()}")
                mlflow.set_tracking_uri(uri)
            out.append(MLflowTracker(project, logging_dir=(directory / "mlartifacts").resolve().as_uri(),
                                     run_name=stage, run_id=_mlflow_run(project, key), tags={"distill.stage": key}))
        else:
            (directory / "wandb").mkdir(parents=True, exist_ok=True)
            out.append(WandBTracker(project, dir=str(directory), name=stage, reinit="finish_previous",
                                    id=hashlib.sha256(key.encode()).hexdigest()[:16], resume="allow"))
    return out


def _mlflow_run(experiment: str, key: str) -> str | None:
    """The MLflow run this stage logged to before (a budget extended, a job resumed), to go on in it."""
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs([found.experiment_id], filter_string=f"tags.`distill.stage` = '{key}'",
                             output_format="list", max_results=1)
    return runs[0].info.run_id if runs else None
