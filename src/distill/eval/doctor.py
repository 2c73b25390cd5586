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
    """{"won": bool | None, "verdict": one sentence, "causes": [...], "try": [...]}. A win is claimed only
    when the paired test of the report's `verdict` (`distill.eval.verdict`) supports it."""
    models = report["models"]
    if "baseline" not in models:
        return {"won": None, "verdict": "No plain student was trained (baseline: false), so no comparison.",
                "causes": [], "try": []}
    t, b, d = (100 * models[k]["accuracy"] for k in ("teacher", "baseline", "distilled"))
    test = report.get("verdict")
    outcome = test["outcome"] if test else ("beats" if d > b else "worse")  # reports from before the test
    won = outcome == "beats"
    scores = f"{d:.2f}% vs {b:.2f}%; teacher {t:.2f}%"
    interval = (f", 95% interval {test['low']:+.2f} to {test['high']:+.2f} points, McNemar p = {test['p_value']:.3g}, "
                f"{test['n']:,} test examples" + (f", {test['seeds']} seeds" if test.get("seeds", 1) > 1 else "")
                if test else "")
    if won:
        verdict = f"The distilled student beats the plain one: {_diff(test, d - b)} points ({scores}{interval})."
    elif outcome == "worse":
        verdict = f"Distillation did NOT beat the plain student: it is worse by {b - d:.2f} points ({scores}{interval})."
    else:
        verdict = (f"No detectable difference between the distilled and the plain student: {_diff(test, d - b)} points "
                   f"({scores}{interval}); more test examples or seeds (`seeds:`) would tell them apart.")
    causes, remedies = ([], []) if won else _causes(report, t, b, significant=outcome == "worse")
    notes = []
    if ((report.get("recipe") or {}).get("pilot") or {}).get("plain_won"):
        said = "In the pilot, no candidate using the teacher beat plain training on validation"
        if won:
            notes.append(f"{said}; over the full budget the distilled student did.")
        else:
            causes.insert(0, f"{said}.")
    return {"won": won, "verdict": verdict, "causes": causes, "try": remedies, "outcome": outcome, "notes": notes}


def _diff(test: dict[str, Any] | None, first_seed: float) -> str:
    """The difference the verdict judged: over every seed when several ran, else the one run's."""
    return f"{test['difference']:+.2f}" if test and test.get("seeds", 1) > 1 else f"{first_seed:+.2f}"


def _causes(report: dict[str, Any], t: float, b: float, significant: bool = False) -> tuple[list[str], list[str]]:
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
        remedies.append(f"Give the teacher more of what the labels lack: unlabelled inputs beyond the {unlabeled:,} "
                        "it scored, or a smaller student." if unlabeled else
                        "Give the teacher what the labels lack: unlabelled inputs (data.unlabeled), or a "
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
    best = recipe.get("distilled_best")
    if best and best["rows"] > 2 and best["row"] == best["rows"] - 1:
        causes.append(f"The distilled student was still improving at its last validation "
                      f"(step {best.get('step')} of {recipe.get('distilled_steps')}): it may need a longer budget.")
        remedies.append("Raise train.steps or train.epochs (the plain student gets as many steps, and keeps its "
                        "best validation row).")
    if not causes:
        if significant:
            causes.append("None of the measured causes applies (teacher ahead, soft targets not one-hot, loss "
                          "terms in scale, no late improvement), and the paired test says the loss is not noise.")
            remedies.append("Try another recipe (recipe: soft_targets with kd.tune, or pilot.candidates); see "
                            "BENCHMARKS.md (kd_wins, defaults_robustness) for what won where.")
        else:
            causes.append("None of the measured causes applies (teacher ahead, soft targets not one-hot, loss "
                          "terms in scale, no late improvement), and the difference is within the test's noise.")
            remedies.append("Run several seeds (`seeds: 3`) or give a larger test split before concluding.")
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
    test = report.get("verdict")
    outcome = test["outcome"] if test else ("beats" if d < b else "worse")  # reports from before the test
    won = outcome == "beats"
    cross = bool(report.get("cross_tokenizer"))  # perplexities over different vocabularies do not compare
    if "bpb" in models["distilled"] and "bpb" in models["baseline"]:
        scores = (f"held-out bits per byte {models['distilled']['bpb']:.4f} vs {models['baseline']['bpb']:.4f}"
                  + (f", teacher {models.get('teacher_adapted', models['teacher'])['bpb']:.4f}"
                     if "bpb" in models.get("teacher_adapted", models["teacher"]) else ""))
        if not cross:
            scores += f"; perplexity {d:.2f} vs {b:.2f} (teacher {t:.2f})"
    else:
        scores = f"held-out perplexity {d:.2f} vs {b:.2f} (teacher {t:.2f})"
    if test:
        scores += (f"; difference {test['difference']:+.4f} {test.get('unit', 'bits per byte')}, 95% interval "
                   f"{test['low']:+.4f} to {test['high']:+.4f} over {test['n']} held-out {test.get('units', 'documents')}")
    if won:
        verdict = f"The distilled student beats the same student trained with CE alone: {scores}."
    elif outcome == "worse":
        verdict = f"Distillation did NOT beat the same student trained with CE alone: it is worse; {scores}."
    else:
        verdict = (f"No detectable difference between the distilled student and the same student trained with CE "
                   f"alone: {scores}. More held-out documents (data.val_blocks, data.val_fraction) would tell them apart.")
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
                          "the teacher's targets to pay off" + ("." if outcome == "worse" else
                                                                ", or the difference within the test's noise."))
            remedies.append("Raise train.steps, or repeat with other train.seed values.")
    return {"won": won, "verdict": verdict, "causes": causes, "try": remedies, "outcome": outcome,
            "notes": lm_sanity(report)}


FAR_BEHIND = 10.0  # a student with this many times the teacher's perplexity is not ready, whatever it beat


def lm_sanity(report: dict[str, Any]) -> list[str]:
    """Notes a verdict must not hide: a student orders of magnitude behind its teacher, too few held-out
    documents for a paired test to see anything."""
    notes = []
    s = report.get("summary", {})
    if not report.get("cross_tokenizer") and s.get("ppl_ratio", 0) >= FAR_BEHIND:
        notes.append(f"The distilled student's perplexity is {s['ppl_ratio']:.0f}× the teacher's: it is far "
                     "from usable whatever it beat; train longer (train.steps) or a larger student.")
    elif s.get("bpb_ratio", 0) >= 1.5:
        notes.append(f"The distilled student needs {s['bpb_ratio']:.1f}× the teacher's bits per byte: it is far "
                     "from the teacher; train longer (train.steps) or a larger student.")
    notes += report.get("timing_notes", [])
    test = report.get("verdict") or {}
    if test and test.get("n", 99) < 5:
        notes.append(f"Only {test['n']} held-out {test.get('units', 'documents')}: too few for the paired test "
                     "to tell students apart; raise data.val_blocks or data.val_fraction.")
    return notes


ONE_HOT_CONFIDENCE = 0.98  # mean top-1 probability above which targets carry little dark knowledge
