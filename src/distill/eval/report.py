"""Render a run directory's report.json and metrics.jsonl files as report.md plus PNG plots.

Renders only: every number shown was computed by `distill.eval.metrics` / `distill.eval.bench`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from distill.core.errors import DistillError
from distill.core.files import atomic_write_text
from distill.eval.figures import class_name, disagreements_figure, pyplot, save_figure


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
    pictures = None
    if report.get("validation"):  # runs made before validation was added have none
        classes = report["dataset"]["classes"]
        plots += [_reliability(run_dir, report["validation"]),
                  _confusion(run_dir, report["validation"], classes)]
        shown = report["validation"].get("distilled", {}).get("disagreements", [])[:10]
        pictures = disagreements_figure(run_dir, shown, classes)
    text = markdown(report, [p.relative_to(run_dir).as_posix() for p in plots],
                    pictures.relative_to(run_dir).as_posix() if pictures else None)
    out = run_dir / "report.md"
    atomic_write_text(out, text)
    return out


def markdown(report: dict[str, Any], plots: list[str], pictures: str | None = None) -> str:
    models, summary = report["models"], report["summary"]
    lines = [f"# distill report: {report['name']}", "",
             f"Dataset **{report['dataset']['name']}** (train {report['dataset']['train']}, "
             f"val {report['dataset']['val']}, test {report['dataset']['test']}). "
             f"Measured {report['date']} on {report['machine']}. {report.get('threads', {}).get('sentence', '')}", "",
             "## Summary", "", *_doctor(report),
             f"- Distilled student keeps **{100 * summary['retention']:.1f}%** of the teacher's accuracy, "
             f"{_size_phrase(summary['compression'])} and is **{summary['speedup_b1']:.1f}×** "
             f"{'faster' if summary['speedup_b1'] >= 1 else 'slower'} at batch 1."]
    if "gap_closed" in summary:
        lines.append(_gap_line(models, summary["gap_closed"], report["dataset"]["test"]))
    lines += ["", "## Teacher, baseline and distilled student (test set)", "", _table(models), ""]
    if report.get("seeds"):
        lines += [_seeds_line(report["seeds"]), ""]
    lines += _pilot(report.get("recipe"))
    lines += ["## Per-class accuracy", "", _per_class(models, report["dataset"]["classes"]), ""]
    if "distilled" in report.get("validation", {}):
        lines += _validation(report["validation"]["distilled"], report["dataset"]["classes"], pictures)
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["Accuracy, agreement and KL are on the test split; KL(teacher‖student) is in nats at T=1; "
              "ECE uses 15 equal-width bins. Latency is the median (p50) and 95th percentile of "
              "single-example forwards after warm-up; throughput is examples/s at the larger batch.", ""]
    return "\n".join(lines)


def doctor_lines(doctor: dict[str, Any]) -> list[str]:
    """Markdown of `distill.eval.doctor`'s answer: the verdict in bold, then causes and what to try."""
    lines = [f"**{doctor['verdict']}**", ""]
    lines += [f"- Note: {n}" for n in doctor.get("notes", [])] + ([""] if doctor.get("notes") else [])
    if doctor["causes"]:
        lines += ["Likely causes, from this run's measurements:", ""]
        lines += [f"- {c}" for c in doctor["causes"]] + [""]
        if doctor["try"]:
            lines += ["Try:", ""] + [f"- {r}" for r in doctor["try"]] + [""]
    return lines


def _doctor(report: dict[str, Any]) -> list[str]:
    """The verdict first (never a success line over a loss), then the likely causes and what to try."""
    doctor = report.get("doctor")
    if not doctor:  # runs made before the doctor existed
        return []
    lines = doctor_lines(doctor)
    notes = report.get("sanity", []) + report.get("timing_notes", []) + \
        (report.get("recipe") or {}).get("budget_notes", [])
    lines += [f"- Note: {n}" for n in notes] + ([""] if notes else [])
    recipe = report.get("recipe")
    if recipe:
        signal = (f"out-of-fold targets from {recipe['out_of_fold']} fold teachers" if recipe.get("out_of_fold")
                  else f"teacher signal {recipe['signal']}")
        over = (f" over {report['dataset']['train']:,} labelled and {report['dataset']['unlabeled']:,} unlabelled "
                "examples" if report["dataset"].get("unlabeled") else "")
        if "distilled_steps" in recipe:
            base = recipe.get("baseline") or {}
            plain_aug = _augment_text(base.get("augment"))
            lines += [f"Recipe: **{recipe['why']}**; {signal}; augmentation {_augment_text(recipe.get('augment'))}. "
                      f"The distilled student trained {recipe['distilled_steps']:,} steps"
                      f" ({_epochs(recipe['distilled_epochs'])}){over}; the plain one {recipe['baseline_steps']:,} "
                      f"steps ({_epochs(recipe['baseline_epochs'])}), augmentation {plain_aug}.", ""]
        else:  # reports from before step budgets
            lines += [f"Recipe: **{recipe['why']}**; {signal}; the distilled student "
                      f"trained {recipe['distilled_epochs']} epochs{over}, the plain one "
                      f"{recipe['baseline_epochs']} epochs (as many steps, same augmentation).", ""]
    return lines


def _gap_line(models: dict[str, Any], closed: float, n_test: int) -> str:
    """The share of the teacher–baseline gap distillation closed, stated only when that gap exceeds
    twice the test set's own noise on a difference of two accuracies (√(2p(1−p)/N)): a share of a gap
    within noise (−1500% of 0.2 points) says nothing."""
    teacher, baseline = models["teacher"]["accuracy"], models["baseline"]["accuracy"]
    p = (teacher + baseline) / 2
    noise = 2 * math.sqrt(2 * p * (1 - p) / max(n_test, 1))
    if teacher - baseline <= noise:
        return (f"- The teacher–baseline gap ({100 * (teacher - baseline):+.1f} points) is within the test set's noise "
                f"(±{100 * noise:.1f} on {n_test:,} examples), so the share of it distillation closes is not stated.")
    return f"- Distillation closes **{100 * closed:.0f}%** of the teacher–baseline accuracy gap."


def _seeds_line(seeds: dict[str, list[float]]) -> str:
    """The students' test accuracy over every seed the job trained (the table shows the first)."""
    import statistics

    parts = [f"{name} {100 * statistics.mean(v):.2f}% ± {100 * statistics.stdev(v):.2f}" for name, v in seeds.items()]
    n = len(next(iter(seeds.values())))
    return f"Over {n} seeds (the table shows the first), test accuracy mean ± std: " + ", ".join(parts) + "."


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _augment_text(aug: dict[str, Any] | None) -> str:
    if not aug:
        return "none"
    parts = ([f"shifts of up to {aug['shift']} px"] if aug.get("shift") else []) + \
        (["flips"] if aug.get("flip") else []) + ([f"mixup Beta({aug['mixup']:g}, {aug['mixup']:g})"]
                                                  if aug.get("mixup") else [])
    return ", ".join(parts) or "none"


def _pilot(recipe: dict[str, Any] | None) -> list[str]:
    """The pilot's table: every candidate's validation score at each budget it reached."""
    pilot = (recipe or {}).get("pilot")
    if not pilot or not pilot.get("rows"):
        return []
    rungs = sorted({r["rung"] for r in pilot["rows"]})
    steps = {r["rung"]: r["steps"] for r in pilot["rows"]}
    names = list(dict.fromkeys(r["name"] for r in pilot["rows"]))
    head = "| candidate | " + " | ".join(f"{steps[k]:,} steps" for k in rungs) + " |"
    out = ["## Pilot: the candidate recipes on validation", "",
           f"`recipe: auto` started every candidate, scored it on validation and kept the best third (and "
           f"each group's default) at each budget; the dropped candidates cost {pilot['seconds']:.1f} s. Mean "
           "validation accuracy over the last third of each budget:", "",
           head, "|" + "---|" * (len(rungs) + 1)]
    for name in names:
        cells = []
        for k in rungs:
            row = next((r for r in pilot["rows"] if r["name"] == name and r["rung"] == k), None)
            cells.append(f"{100 * row['val_accuracy']:.2f}%" if row else "–")
        mark = " (distilled)" if name == pilot.get("winner") else " (baseline)" if name == pilot.get("best_plain") else ""
        out.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    return out + [""]


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


def _validation(v: dict[str, Any], classes: list[str], pictures: str | None) -> list[str]:
    lines = ["## Where the student lost most", "",
             f"Classes where the distilled student's test accuracy fell furthest below the teacher's "
             f"(worst {min(5, len(v['per_class']))} of {len(v['per_class'])}).", "",
             _regressions(v["per_class"][:5], "class", lambda g: class_name(classes, g)), ""]
    if v.get("per_slice"):
        lines += ["### Slices", "", _regressions(v["per_slice"][:5], "slice", str), ""]
    lines += ["## Largest disagreements", "",
              f"Teacher and distilled student predict different classes on "
              f"**{v['n_disagreements']}** of {v['n']} test examples; those with the largest symmetric KL between their output "
              "distributions (confidence: each model's probability of its own prediction):", "",
              _disagreements(v["disagreements"][:10], classes), ""]
    return lines + ([f"![the disagreements above, numbered as in the table]({pictures})", ""] if pictures else [])


def _regressions(rows: list[dict[str, Any]], what: str, name: Any) -> str:
    out = [f"| {what} | examples | teacher | distilled | change |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {name(r['group'])} | {r['n']} | {r['teacher_accuracy']:.1%} | "
                   f"{r['student_accuracy']:.1%} | {100 * r['delta']:+.1f} pts |")
    return "\n".join(out)


def _disagreements(rows: list[dict[str, Any]], classes: list[str]) -> str:
    out = ["| test example | label | teacher (confidence) | distilled (confidence) "
           "| distilled P(teacher's class) | symmetric KL |", "|---|---|---|---|---|---|"]
    for k, r in enumerate(rows, 1):
        shown = (f"{r['index']}: {r['input']}".replace("|", "\\|") if r.get("input") else
                 f"{k}. row {r['index']} (pictured below)" if r.get("thumbnail") else f"row {r['index']}")
        out.append(f"| {shown} | {class_name(classes, r['label'])} | "
                   f"{class_name(classes, r['teacher_prediction'])} ({r['teacher_confidence']:.1%}) | "
                   f"{class_name(classes, r['student_prediction'])} ({r['student_confidence']:.1%}) | "
                   f"{r['student_prob_of_teacher']:.1%} | {r['symmetric_kl']:.3f} |")
    if not rows:
        out.append("| – | – | – | – | – | – |")
    return "\n".join(out)


def _history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _learning_curves(run_dir: Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage, rows in histories.items():
        if rows:
            epochs = [r["epoch"] if "step" in r else r["epoch"] + 1 for r in rows]  # epochs done (older rows: index)
            ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", ms=3, label=stage)
            if "val_accuracy" in rows[0]:
                ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], marker="o", ms=3, label=stage)
    ax_loss.set(xlabel="epochs done (of each student's own training set)", ylabel="training loss",
                title="Training loss")
    ax_acc.set(xlabel="epochs done (of each student's own training set)", ylabel="validation accuracy (%)",
               title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, run_dir / "plots" / "learning_curves.png")


def _accuracy_vs_cost(run_dir: Path, models: dict[str, Any]) -> Path:
    plt = pyplot()
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in models.items():
        for ax, key in ((ax_lat, "latency_b1_p50_ms"), (ax_size, "size_mb")):
            ax.scatter(m[key], 100 * m["accuracy"], s=60)
            ax.annotate(name, (m[key], 100 * m["accuracy"]), textcoords="offset points", xytext=(6, 4))
    ax_lat.set(xscale="log", xlabel="latency at batch 1, p50 (ms, log)", ylabel="test accuracy (%)",
               title="Accuracy vs latency")
    ax_size.set(xscale="log", xlabel="size on disk (MB, log)", ylabel="test accuracy (%)",
                title="Accuracy vs size")
    for ax, key in ((ax_lat, "latency_b1_p50_ms"), (ax_size, "size_mb")):
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        _plain_log_ticks(ax, [m[key] for m in models.values()])
    return save_figure(fig, run_dir / "plots" / "accuracy_vs_cost.png")


def _reliability(run_dir: Path, validation: dict[str, Any]) -> Path:
    """Reliability diagram (accuracy against confidence per bin) and the predictions per bin."""
    plt = pyplot()
    fig, (ax_rel, ax_count) = plt.subplots(1, 2, figsize=(10, 3.8))
    curves = {"teacher": next(iter(validation.values()))["calibration"]["teacher"],
              **{name: v["calibration"]["student"] for name, v in validation.items()}}
    ax_rel.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    width = 1 / len(next(iter(curves.values()))["bins"]) / (len(curves) + 1)
    for k, (name, cal) in enumerate(curves.items()):
        used = [b for b in cal["bins"] if b["count"] > 0]
        ax_rel.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", ms=4,
                    label=f"{name} (ECE {cal['ece']:.3f})")
        ax_count.bar([b["lower"] + (k + 0.5) * width for b in cal["bins"]],
                     [b["count"] for b in cal["bins"]], width=width, align="edge", label=name)
    ax_rel.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy",
               title="Reliability (test set)")
    ax_count.set(xlim=(0, 1), yscale="log", xlabel="confidence (top-1 probability)",
                 ylabel="test examples (log)", title="Confidence histogram")
    for ax in (ax_rel, ax_count):
        ax.grid(alpha=0.3)
    ax_rel.legend(fontsize="small", loc="best")
    ax_count.legend(fontsize="small", loc="upper left")
    return save_figure(fig, run_dir / "plots" / "reliability.png")


def _confusion(run_dir: Path, validation: dict[str, Any], classes: list[str]) -> Path:
    """One confusion-matrix heatmap per student: true class down, predicted class across."""
    plt = pyplot()
    names = sorted(validation, key=lambda n: n != "distilled")  # the distilled student first
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        counts = validation[name]["confusion"]
        n = len(counts)
        image = ax.imshow(counts, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        labels = [class_name(classes, i) for i in range(n)]
        ticks = range(n) if n <= 30 else range(0, n, max(1, n // 15))
        upright = n <= 10 and max(len(t) for t in labels) <= 2  # longer names would overlap
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=0 if upright else 90)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks])
        ax.set(xlabel=f"{name} prediction", ylabel="true class", title=f"Confusion: {name}")
        if n <= 15:
            top = max(max(row) for row in counts) or 1
            for i, row in enumerate(counts):
                for j, c in enumerate(row):
                    if c:
                        ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                                color="white" if c > top / 2 else "black")
    return save_figure(fig, run_dir / "plots" / "confusion.png")


# --------------------------------------------------------------------------- distill lm


def lm_learning_curves(run_dir: Path, report: dict[str, Any]) -> Path:
    """Training loss and held-out perplexity against tokens seen per LM student; the teacher's as a line."""
    plt = pyplot()
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.8))
    d = report["data"]
    per_step = d["tokens_seen"] / max(1, d.get("steps") or 1)
    for stage in ("baseline", "distilled"):
        rows = _history(run_dir / stage / "metrics.jsonl")
        if rows:
            tokens = [r["step"] * per_step for r in rows]
            ax_loss.plot(tokens, [r["train_loss"] for r in rows], marker="o", label=stage)
            if "val_ppl" in rows[0]:
                ax_ppl.plot(tokens, [r["val_ppl"] for r in rows], marker="o", label=stage)
    models = report["models"]
    taught_by = "teacher_adapted" if "teacher_adapted" in models else "teacher"
    ax_ppl.axhline(models[taught_by]["ppl"], color="grey", linestyle="--", label=taught_by.replace("_", " "))
    ax_loss.set(xlabel="tokens seen", ylabel="training loss", title="Training loss (each arm's own loss)")
    ax_ppl.set(xlabel="tokens seen", ylabel="held-out perplexity", title="Held-out perplexity (lower is better)")
    ax_ppl.set_yscale("log")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, run_dir / "plots" / "lm_curves.png")


# --------------------------------------------------------------------------- distill search


def _plain_log_ticks(ax: Any, values: list[float]) -> None:
    """Plain numbers on a log x-axis at 1-2-5 steps, or at the points when fewer than two such are in view."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    lo, hi = ax.get_xlim()  # after margins: the ticks are those a reader sees
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks if len(ticks) >= 2 else sorted(set(values))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def render_search(root: Path, report: dict[str, Any]) -> Path:
    """search.md and plots/pareto.png for a finished `distill search`."""
    plot = _pareto_plot(root, report)
    atomic_write_text(root / "search.md", _search_markdown(report, plot.relative_to(root)))
    return root / "search.md"


def _search_markdown(report: dict[str, Any], plot: Path) -> str:
    req = {k: v for k, v in report["requirements"].items() if v is not None and k != "threads"}
    t, best = report["teacher"], report["recommended"]
    lines = [f"# Student search: {report['name']}", "",
             "Requirements: " + (", ".join(f"`{k}` = {v}" for k, v in req.items()) or "none"), ""]
    if best:
        lines += [f"**Recommended: `{best['name']}`** ({_values(best['values'])}): accuracy "
                  f"{best['accuracy']:.2f}% (drop {best['drop']:.2f} points), {best['speedup']:.2f}× faster, "
                  f"{best['params']:,} parameters, {best['size_mb']:.2f} MB.", ""]
    else:
        lines += ["**No candidate meets every requirement.** " + (
            "No candidate meets " + ", ".join(f"`{k}` (smallest shortfall {v:.3g})" for k, v in report["unmet"].items())
            if report["unmet"] else "Each requirement is met by some candidate, but none meets all at once") + ".",
            "Closest: " + "; ".join(f"`{c['name']}` misses " + ", ".join(f"`{k}` by {v:.3g}" for k, v in
                                                                         c["shortfalls"].items())
                                   for c in report["closest"]) + ".", ""]
    shown = report["candidates"]
    lines += ["| candidate | values | accuracy % | drop | speed-up | params | size MB | p95 ms | Pareto | meets |",
              "|---|---|---|---|---|---|---|---|---|---|",
              f"| teacher | — | {t['accuracy']:.2f} | — | 1.00× | {t['params']:,} | {t['size_mb']:.2f} | "
              f"{t['latency_p95_ms']:.2f} | | |"]
    for c in sorted(shown, key=lambda c: c["params"]):
        lines.append(f"| {c['name']} | {_values(c['values'])} | {c['accuracy']:.2f} | {c['drop']:.2f} | "
                     f"{c['speedup']:.2f}× | {c['params']:,} | {c['size_mb']:.2f} | {c['latency_p95_ms']:.2f} | "
                     f"{'yes' if c['pareto'] else ''} | {'yes' if c['meets'] else ''} |")
    return "\n".join(lines + ["", f"![Pareto front]({plot})", ""])


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())


def _pareto_plot(root: Path, report: dict[str, Any]) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cands, t, best = report["candidates"], report["teacher"], report["recommended"]
    for ax, cost, label in ((axes[0], "latency_p50_ms", "batch-1 latency, ms (p50)"),
                            (axes[1], "size_mb", "size, MB")):
        ax.scatter([c[cost] for c in cands], [c["accuracy"] for c in cands], c="tab:gray", label="candidate")
        front = sorted((c for c in cands if c["pareto"]), key=lambda c: c[cost])
        ax.plot([c[cost] for c in front], [c["accuracy"] for c in front], "o-", c="tab:blue", label="Pareto front")
        ax.scatter([t[cost]], [t["accuracy"]], marker="*", s=150, c="tab:orange", label="teacher")
        if best:
            ax.scatter([best[cost]], [best["accuracy"]], s=160, facecolors="none", edgecolors="tab:green",
                       linewidths=2, label="recommended")
        req = report["requirements"]
        if req.get("max_accuracy_drop") is not None:
            ax.axhline(t["accuracy"] - req["max_accuracy_drop"], ls="--", c="tab:red", lw=1, label="accuracy floor")
        limit = (t[cost] / req["min_speedup"] if cost == "latency_p50_ms" and req.get("min_speedup")
                 else req.get("max_size_mb") if cost == "size_mb" else None)
        if limit:
            ax.axvline(limit, ls=":", c="tab:red", lw=1, label="speed / size limit")
        ax.set(xlabel=label, ylabel="test accuracy, %", xscale="log")
        _plain_log_ticks(ax, [c[cost] for c in [*cands, t]])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Student search: {report['name']}")
    return save_figure(fig, root / "plots" / "pareto.png")
