"""Render a run directory's report.json and metrics.jsonl files as report.md plus PNG plots.

Renders only: every number shown was computed by `distill.evaluate` / `distill.bench`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.files import atomic_write_bytes, atomic_write_text
from distill.errors import DistillError

def render(run_dir: Path) -> Path:
    """Write `report.md` and `plots/*.png` in `run_dir`; returns the report's path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise DistillError(f"{path} not found: `distill report` needs a finished run directory "
                           "(created by `distill run`).")
    report = json.loads(path.read_text())
    histories = {s: _history(run_dir / s / "metrics.jsonl") for s in report["models"]}
    plots = [_learning_curves(run_dir, histories), _accuracy_vs_cost(run_dir, report["models"])]
    text = markdown(report, [p.relative_to(run_dir).as_posix() for p in plots])
    out = run_dir / "report.md"
    atomic_write_text(out, text)
    return out


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    models, summary = report["models"], report["summary"]
    lines = [f"# distill report: {report['name']}", "",
             f"Dataset **{report['dataset']['name']}** (train {report['dataset']['train']}, "
             f"val {report['dataset']['val']}, test {report['dataset']['test']}). "
             f"Measured {report['date']} on {report['machine']}.", "",
             "## Summary", "",
             f"- Distilled student keeps **{100 * summary['retention']:.1f}%** of the teacher's accuracy, "
             f"{_size_phrase(summary['compression'])} and is **{summary['speedup_b1']:.1f}×** "
             f"{'faster' if summary['speedup_b1'] >= 1 else 'slower'} at batch 1."]
    if "gap_closed" in summary:
        lines.append(f"- Distillation closes **{100 * summary['gap_closed']:.0f}%** of the "
                     "teacher–baseline accuracy gap.")
    lines += ["", "## Teacher, baseline and distilled student (test set)", "", _table(models), ""]
    lines += ["## Per-class accuracy", "", _per_class(models, report["dataset"]["classes"]), ""]
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["Accuracy, agreement and KL are on the test split; KL(teacher‖student) is in nats at T=1; "
              "ECE uses 15 equal-width bins. Latency is the median (p50) and 95th percentile of "
              "single-example forwards after warm-up; throughput is examples/s at the larger batch.", ""]
    return "\n".join(lines)


def _size_phrase(compression: float) -> str:
    if compression >= 1:
        return f"has **{compression:.1f}×** fewer parameters"
    return f"has **{1 / compression:.1f}×** more parameters"


COLUMNS = [("accuracy", "accuracy", "{:.2%}"), ("agreement", "agreement", "{:.2%}"),
           ("kl_teacher", "KL(T‖S)", "{:.4f}"), ("ece", "ECE", "{:.4f}"), ("params", "params", "{:,}"),
           ("size_mb", "size MB", "{:.3f}"), ("latency_b1_p50_ms", "p50 ms", "{:.3f}"),
           ("latency_b1_p95_ms", "p95 ms", "{:.3f}"), ("throughput", "ex/s", "{:,.0f}"),
           ("peak_memory_mb", "peak MB", "{:.2f}")]


def _table(models: dict[str, Any]) -> str:
    head = "| model | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in models.items():
        cells = [fmt.format(m[key]) if key in m else "–" for key, _, fmt in COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _per_class(models: dict[str, Any], classes: list[str]) -> str:
    rows = ["| class | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
    for i, c in enumerate(classes):
        rows.append(f"| {c} | " + " | ".join(f"{m['per_class_accuracy'][i]:.1%}" for m in models.values()) + " |")
    return "\n".join(rows)


def _history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _learning_curves(run_dir: Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage, rows in histories.items():
        if rows:
            epochs = [r["epoch"] + 1 for r in rows]
            ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=stage)
            if "val_accuracy" in rows[0]:
                ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], label=stage)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, run_dir / "plots" / "learning_curves.png")


def _accuracy_vs_cost(run_dir: Path, models: dict[str, Any]) -> Path:
    plt = _pyplot()
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in models.items():
        for ax, key in ((ax_lat, "latency_b1_p50_ms"), (ax_size, "size_mb")):
            ax.scatter(m[key], 100 * m["accuracy"], s=60)
            ax.annotate(name, (m[key], 100 * m["accuracy"]), textcoords="offset points", xytext=(6, 4))
    ax_lat.set(xscale="log", xlabel="latency at batch 1, p50 (ms, log)", ylabel="test accuracy (%)",
               title="Accuracy vs latency")
    ax_size.set(xscale="log", xlabel="size on disk (MB, log)", ylabel="test accuracy (%)",
                title="Accuracy vs size")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (ax_lat, ax_size):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap
        ax.margins(x=0.25, y=0.15)
    return _save(fig, run_dir / "plots" / "accuracy_vs_cost.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
