"""The temperature and ratio of soft-target KD, chosen on the validation split by a short proxy sweep.

Optuna's TPE sampler proposes (T, ratio) with T in [1, 8] (log scale) and ratio in [0, 1]; each proposal trains
a fresh student for a share of the run's epochs (`kd.tune.epochs`) and is scored by its best validation
accuracy, ties broken by lower validation NLL (as `fit` picks epochs). The sweep is saved to
`<stage>/kd_tune.json` after each trial, so a resumed run repeats none. Optuna is a well-kept library
for exactly this; only the proxy objective is written here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from distill.core.errors import ConfigError
from distill.core.files import atomic_write_text
from distill.losses.config import KDTune
from distill.losses.methods import KD
from distill.teachers.output import Teacher
from distill.training.classify import fit
from distill.training.config import TrainConfig

T_RANGE = (1.0, 8.0)


def tune_kd(tune: KDTune, build: Callable[[], nn.Module], train_data: Dataset, val_data: Dataset, *,
            config: TrainConfig, num_classes: int, teacher: Teacher, stage_dir: Path,
            device: str = "auto", quiet: bool = False) -> KD:
    """The best KD of the sweep (resumed from `stage_dir/kd_tune.json` when it is there)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("kd.tune needs the optuna package: pip install 'distill[search]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = stage_dir / "kd_tune.json"
    done: list[dict[str, Any]] = json.loads(path.read_text())["trials"] if path.is_file() else []
    done = [{("ratio" if k == "alpha" else k): v for k, v in row.items()} for row in done]  # sweeps saved before
    # the CE/KD mix was named `ratio` resume
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    for row in done:
        study.add_trial(optuna.trial.create_trial(params={"temperature": row["temperature"], "ratio": row["ratio"]},
                                                  distributions=_space(optuna), value=row["score"]))
    per_epoch = math.ceil(len(train_data) / config.batch_size) if train_data is not None else 1  # type: ignore[arg-type]
    proxy = config.with_steps(max(1, round(config.total_steps(per_epoch) * tune.epochs)))
    for _ in range(tune.trials - len(done)):
        trial = study.ask(_space(optuna))
        kd = KD(trial.params["temperature"], trial.params["ratio"])
        out = fit(build(), train_data, objective=kd, config=proxy, num_classes=num_classes, teacher=teacher,
                  val_data=val_data, device=device, quiet=True, name=f"kd.tune {len(done) + 1}/{tune.trials}")
        best = out.history[out.best_epoch]  # the row the run keeps (`kept_row`)
        score = best["val_accuracy"] - 1e-3 * min(best["val_nll"], 10.0)  # accuracy first, NLL breaks ties
        study.tell(trial, score)
        done.append({**trial.params, "score": score, "val_accuracy": best["val_accuracy"]})
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"trials": done, "proxy_steps": proxy.steps,
                                                 "proxy_epochs": round(proxy.steps / per_epoch, 2)}, indent=2))
        if not quiet:
            print(f"kd.tune {len(done)}/{tune.trials}: T={trial.params['temperature']:.2f} "
                  f"ratio={trial.params['ratio']:.2f} "
                  f"val accuracy {best['val_accuracy']:.4f}")
    best_row = max(done, key=lambda r: r["score"])
    return KD(best_row["temperature"], best_row["ratio"])


def _space(optuna: Any) -> dict[str, Any]:
    return {"temperature": optuna.distributions.FloatDistribution(*T_RANGE, log=True),
            "ratio": optuna.distributions.FloatDistribution(0.0, 1.0)}
