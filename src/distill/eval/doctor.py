"""The report's doctor: says first whether the distilled student beat the plain one, and when it did
not, names the likely cause from measured quantities and the recipe to try.

Reads only numbers the run measured (`report.json`): test accuracies, the teacher's confidence and
entropy on its training and validation examples, the recipe, the transfer set's size, the loss-scale
guard's warnings and each student's best epoch. Rules, not a model: each cause is one threshold.
"""

from __future__ import annotations

from typing import Any

SMALL_GAP = 0.005  # a plain student this close to the teacher leaves little to close


def diagnose(report: dict[str, Any]) -> dict[str, Any]:
    """{"won": bool | None, "verdict": one sentence, "causes": [...], "try": [...]}."""
    models = report["models"]
    if "baseline" not in models:
        return {"won": None, "verdict": "No plain student was trained (baseline: false), so no comparison.",
                "causes": [], "try": []}
    t, b, d = (100 * models[k]["accuracy"] for k in ("teacher", "baseline", "distilled"))
    won = d > b
    verdict = (f"The distilled student beats the plain one: {d:.2f}% vs {b:.2f}% ({d - b:+.2f} points; "
               f"teacher {t:.2f}%)." if won else
               f"Distillation did NOT beat the plain student: {d:.2f}% vs {b:.2f}% ({d - b:+.2f} points; "
               f"teacher {t:.2f}%).")
    causes, remedies = ([], []) if won else _causes(report, t, b)
    return {"won": won, "verdict": verdict, "causes": causes, "try": remedies}


def _causes(report: dict[str, Any], t: float, b: float) -> tuple[list[str], list[str]]:
    causes: list[str] = []
    remedies: list[str] = []
    signal = report.get("teacher_signal", {})
    recipe = report.get("recipe", {})
    unlabeled = report["dataset"].get("unlabeled", 0)
    if t <= b:
        causes.append(f"The teacher ({t:.2f}%) is no more accurate than the plain student ({b:.2f}%): there is "
                      "nothing to distil.")
        remedies.append("Train a stronger teacher (more epochs, augmentation, a larger model) before distilling.")
    elif (t - b) / 100 < SMALL_GAP:
        causes.append(f"The plain student is within {t - b:.2f} points of the teacher: the student already "
                      "learns almost all the labels can teach.")
        remedies.append("Give the teacher what the labels lack: unlabelled inputs (data.unlabeled), or a "
                        "smaller student.")
    conf = signal.get("train_confidence")
    if conf is not None and conf > ONE_HOT_CONFIDENCE and recipe.get("recipe") != "function_matching" and \
            not unlabeled and not recipe.get("out_of_fold"):
        causes.append(f"The teacher is near one-hot on its own training examples (mean confidence "
                      f"{100 * conf:.1f}%, entropy {signal['train_entropy']:.3f} nats vs "
                      f"{signal['val_entropy']:.3f} on validation): its soft targets there carry little "
                      "dark knowledge.")
        remedies.append("Let the teacher score new inputs: recipe: function_matching (shifted, mixed views "
                        "through the live teacher), or a transfer set (data.unlabeled / data.label_fraction).")
    for note in report.get("loss_scale", []):
        if note.startswith("loss scale:"):  # a warning, not train.normalize_terms' record of its divisors
            causes.append(note)
    if recipe.get("distilled_best_epoch") is not None and \
            recipe["distilled_best_epoch"] + 1 >= recipe.get("distilled_epochs", 0):
        causes.append(f"The distilled student was still improving at its last epoch "
                      f"({recipe.get('distilled_epochs')}): distillation on varied views pays off late.")
        remedies.append("Raise train.epochs (the plain student gets as many steps, and keeps its best epoch).")
    if not causes:
        causes.append("None of the measured causes applies (teacher ahead, soft targets not one-hot, loss "
                      "terms in scale, no late improvement); the difference may be within seed noise.")
        remedies.append("Repeat with other train.seed values before concluding; see BENCHMARKS.md (kd_wins) "
                        "for what won where.")
    return causes, remedies


def lm_kd_settings(report: dict[str, Any]) -> dict[str, Any]:
    """The `kd` settings of an LM report; reports written before the names were unified keep them under
    `loss`, with `kind`, `beta` and `alpha` for divergence, jsd_beta and skew."""
    if "kd" in report:
        return report["kd"]
    old = {"kind": "divergence", "beta": "jsd_beta", "alpha": "skew"}
    return {old.get(k, k): v for k, v in report["loss"].items()}


def diagnose_lm(report: dict[str, Any]) -> dict[str, Any]:
    """The doctor of a `distill lm` report: held-out perplexities (lower is better) and the loss settings."""
    models, kd = report["models"], lm_kd_settings(report)
    if "baseline" not in models:
        return {"won": None, "verdict": "No CE student was trained (baseline: false), so no comparison.",
                "causes": [], "try": []}
    t = models.get("teacher_adapted", models["teacher"])["ppl"]
    b, d = models["baseline"]["ppl"], models["distilled"]["ppl"]
    won = d < b
    verdict = (f"The distilled student beats the same student trained with CE alone: held-out perplexity "
               f"{d:.2f} vs {b:.2f} (teacher {t:.2f})." if won else
               f"Distillation did NOT beat the same student trained with CE alone: held-out perplexity {d:.2f} vs "
               f"{b:.2f} (teacher {t:.2f}).")
    causes: list[str] = []
    remedies: list[str] = []
    if not won:
        if t >= b:
            causes.append(f"The teacher's perplexity on this corpus ({t:.2f}) is no better than the CE student's.")
            remedies.append("Adapt the teacher to the corpus first (teacher.adapt), or choose a stronger teacher.")
        elif not report.get("teacher_adapt"):
            causes.append(f"The teacher was not adapted to the corpus (perplexity {t:.2f}): its targets follow its "
                          "pretraining text, not this one.")
            remedies.append("Set teacher.adapt: {steps: 60, lr: 1.0e-4} (it won on the KJV in BENCHMARKS.md).")
        if kd["ratio"] >= 1:
            causes.append("kd.ratio is 1: the student never sees the gold next token, only the teacher's guess.")
            remedies.append("Set kd.ratio: 0.5 (the measured default).")
        if kd["divergence"] in ("reverse_kl", "jsd", "skew_reverse_kl") and not kd.get("warm_start"):
            causes.append(f"{kd['divergence']} from an untrained start: its gradients are tiny while the student "
                          "spreads its mass over the whole vocabulary.")
            remedies.append("Set kd.warm_start (e.g. a quarter of train.steps) or use kd.divergence: forward_kl.")
        if not causes:
            causes.append("None of the measured causes applies; the budget (train.steps) may be too short for "
                          "the teacher's targets to pay off, or the difference within seed noise.")
            remedies.append("Raise train.steps, or repeat with other train.seed values.")
    return {"won": won, "verdict": verdict, "causes": causes, "try": remedies}


ONE_HOT_CONFIDENCE = 0.98  # mean top-1 probability above which targets carry little dark knowledge
