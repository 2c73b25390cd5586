"""The classifier job's commands on trained weights (`distill eval`, `bench`, `monitor`, `export`,
`quantize`): the models a config's checkpoints name, rebuilt and loaded, and what each command
computes from them. The CLI only parses arguments and prints what these return."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from distill.core.checkpoint import load_weights
from distill.core.errors import ConfigError
from distill.core.rundir import require_finished_run
from distill.data.arrays import DataSplits, Standardise, labels_of
from distill.data.datasets import load_data
from distill.data.tokenizers import MINILM
from distill.eval.bench import measure_models
from distill.eval.metrics import classification_metrics, evaluate_model, predict
from distill.models.ensemble import build_ensemble
from distill.models.zoo import build_model
from distill.recipes.classify.config import RunConfig
from distill.recipes.classify.plan import kd_objective
from distill.recipes.classify.students import build_student


def trained_models(cfg: RunConfig) -> tuple[DataSplits, dict[str, nn.Module]]:
    """The data and the trained teacher and student of `cfg` (`teacher.checkpoint`, `student.checkpoint`)."""
    data = load_data(cfg.data)
    models: dict[str, nn.Module] = {}
    if cfg.teacher.members:
        t = cfg.teacher
        models["teacher"] = build_ensemble(t.members, data.input_shape, data.num_classes, t.combine, t.weights)
    for key, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
        if key in models:
            continue
        if spec.checkpoint is None:
            raise ConfigError(f"`{key}.checkpoint` is required here: the .safetensors weights to load "
                              "(e.g. runs/default/teacher/model.safetensors).")
        models[key] = (build_model(spec, data.input_shape, data.num_classes) if key == "teacher" else
                       build_student(cfg, data, models["teacher"]))
        load_weights(spec.checkpoint, models[key])
    return data, models


def evaluate_trained(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Test-split metrics of the teacher and of the student (with its agreement with the teacher)."""
    data, models = trained_models(cfg)
    t_metrics, t_logits = evaluate_model(models["teacher"], data.test)
    s_metrics, _ = evaluate_model(models["student"], data.test, t_logits)
    return {"teacher": t_metrics, "student": s_metrics}


def bench_trained(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Size, latency, throughput and memory of the teacher and the student, timed side by side."""
    data, models = trained_models(cfg)
    return measure_models(models, data.input_shape, threads=cfg.bench.threads, batch=cfg.bench.throughput_batch,
                          repeats=cfg.bench.repeats)


def export_trained(cfg: RunConfig, which: str, fmt: str, out: Path, *, check: bool, int8: bool) -> dict[str, Any]:
    """Export the teacher or the student (`which`) in `fmt` with its model card; the check's figures
    when asked."""
    from distill.export.formats import export_model

    spec = getattr(cfg, which)
    if spec.checkpoint is None:
        raise ConfigError(f"`{which}.checkpoint` is required: the .safetensors weights to export.")
    require_finished_run(Path(spec.checkpoint), f"`{which}.checkpoint`")
    data = load_data(cfg.data)
    teacher = (build_model(cfg.teacher, data.input_shape, data.num_classes)
               if which == "teacher" or cfg.student.from_teacher else None)
    model = teacher if which == "teacher" else build_student(cfg, data, teacher)
    load_weights(spec.checkpoint, model)
    text = data.modality == "text"
    tokenizer = (cfg.data.tokenizer or MINILM) if text else None
    report = _run_report(Path(spec.checkpoint))
    name = (report or {}).get("name") or cfg.name  # the run that trained it, whatever this config is called
    return export_model(model, fmt, out, data.test, check=check, meta={"config": name, "model": which},
                        tokenizer=tokenizer, int8=int8, labels=data.class_names,
                        max_length=cfg.data.max_length if text else None, preprocessing=_preprocessing(data),
                        card=lambda result: _card(cfg, data, which, fmt, result, name, report))


def _run_report(checkpoint: Path) -> dict[str, Any] | None:
    """The report.json of the run whose weights `checkpoint` is (RUN/<stage>/model.safetensors →
    RUN/report.json), when it lies there."""
    found = checkpoint.parent.parent / "report.json"
    return json.loads(found.read_text()) if found.is_file() else None


def _preprocessing(data: DataSplits) -> dict[str, float] | None:
    """How raw array inputs become model inputs (scale, then standardise), when the data says."""
    prep = data.prepare
    if not isinstance(prep, Standardise):
        return None
    return {"input_scale": prep.scale, "input_mean": prep.mean, "input_std": prep.std}


def _card(cfg: RunConfig, data: DataSplits, which: str, fmt: str, result: dict[str, Any], name: str,
          report: dict[str, Any] | None) -> str:
    """The model card of an export, titled `name`: the config's sections, and the run's `report`
    (its measured quality and speed) when one lies beside the checkpoint."""
    from distill.export.card import classifier_card

    dump = cfg.model_dump()
    section = {"name": cfg.data.name, "classes": data.class_names, "modality": data.modality}
    return classifier_card(name=name, which=which, fmt=fmt, teacher=dump["teacher"],
                           student=dump["student"], data=section, kd=dump.get("kd"), report=report,
                           check=result.get("parity"), inputs=result.get("input_names"),
                           custom_code=result.get("custom_code", True))


def quantize_trained(cfg: RunConfig, method: str, backend: str, *, qat_epochs: int = 1,
                     qat_lr: float = 1e-4) -> tuple[dict[str, dict[str, float]], nn.Module]:
    """The trained student in int8 (dynamic, static or QAT with the teacher), and fp32 vs int8: test
    accuracy, size and CPU timing."""
    from distill.compress import quantize as q

    if cfg.student.checkpoint is None:
        raise ConfigError("`student.checkpoint` is required: the trained student's .safetensors weights.")
    if method == "qat" and cfg.teacher.checkpoint is None:
        raise ConfigError("--method qat distils from the teacher while it fine-tunes: give the trained teacher "
                          "as teacher.checkpoint=T.safetensors (or use --method static, which needs none).")
    q.check_backend(backend)
    data = load_data(cfg.data)
    needs_teacher = cfg.student.from_teacher or method == "qat"
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes) if needs_teacher else None
    fp32 = build_student(cfg, data, teacher).eval()
    load_weights(cfg.student.checkpoint, fp32)
    if method == "qat":
        assert teacher is not None and cfg.teacher.checkpoint is not None
        load_weights(cfg.teacher.checkpoint, teacher)
        int8 = q.qat_with_teacher(fp32, teacher, data.train, num_classes=data.num_classes,
                                  objective=kd_objective(cfg.kd), epochs=qat_epochs, lr=qat_lr,
                                  batch_size=cfg.train.batch_size, backend=backend, seed=cfg.train.seed,
                                  quiet=cfg.quiet)
    else:
        int8 = (q.quantize_dynamic_int8(fp32, backend=backend) if method == "dynamic" else
                q.quantize_static_int8(fp32, data.train, backend=backend))
    out = q.measure_cpu({"fp32": fp32, "int8": int8}, data.input_shape, threads=cfg.bench.threads,
                        batch=cfg.bench.throughput_batch, repeats=cfg.bench.repeats)
    for name, model in (("fp32", fp32), ("int8", int8)):
        logits = predict(model, data.test)
        out[name] = {"accuracy": classification_metrics(logits, labels_of(data.test))["accuracy"], **out[name]}
    return out, int8
