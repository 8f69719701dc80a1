"""Cohort metrics from per-slide predictions (numpy only), per slide and per patient, and the table.

The predictions are plain arrays, so the same code scores a fresh evaluation and a
``predictions.csv`` read back (:func:`engine.evaluate.files.read_predictions`).
Classification: ROC AUC per class and macro with 95% bootstrap intervals (resampled within
classes), accuracy and balanced accuracy at a stated threshold, the confusion matrix.
Multilabel: ROC AUC per label (with interval) and macro. Regression, per target: Spearman with
interval, Pearson, MAE, R². Per patient: each patient's slides aggregated by max or mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine import metrics as m


@dataclass(frozen=True)
class Predictions:
    """One row per slide: ``truths`` (class indices (n,), or values (n, targets)) and ``outputs``
    (class or label probabilities, or predicted values in the targets' units), ``names`` the
    classes / labels / targets, ``patients`` None or one id per slide (None: its own patient)."""

    task: str
    names: tuple[str, ...]
    slides: tuple[str, ...]
    truths: np.ndarray
    outputs: np.ndarray
    patients: tuple[str | None, ...] | None = None


def _value(value: float, ci: tuple[float, float] | None = None) -> dict:
    out = {"value": _finite(value)}
    if ci is not None:
        out["ci95"] = [_finite(ci[0]), _finite(ci[1])]
    return out


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined metric (one class only, constant values) is null."""
    return None if x is None or not math.isfinite(x) else float(x)


def classification_block(names: Sequence[str], labels: np.ndarray, probs: np.ndarray, *, threshold: float | None,
                         n_boot: int, seed: int) -> dict:
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    k = len(names)
    per_class = {}
    for c, name in enumerate(names):
        positive = labels == c
        auc = m.roc_auc(probs[:, c], positive)
        ci = m.auc_interval(probs[:, c], positive, n=n_boot, seed=seed) if n_boot and not math.isnan(auc) else None
        per_class[name] = _value(auc, ci)

    def macro(idx: np.ndarray) -> float:
        return m.classification_metrics(probs[idx], labels[idx], [], threshold)["macro_auc"]

    macro_auc = macro(np.arange(len(labels)))
    macro_ci = (m.bootstrap_interval(macro, len(labels), n=n_boot, seed=seed, strata=labels)
                if n_boot and not math.isnan(macro_auc) else None)
    predicted = m.predicted_classes(probs, threshold)
    out = {"n": int(len(labels)),
           "auc_per_class": per_class,
           "macro_auc": _value(macro_auc, macro_ci),
           "accuracy": _finite(float(np.mean(predicted == labels)) if len(labels) else math.nan),
           "balanced_accuracy": _finite(m.balanced_accuracy(labels, predicted, k)),
           "decision": (f"class '{names[1]}' when its probability >= {threshold:g}" if threshold is not None and k == 2
                        else "the most probable class"),
           "confusion_matrix": {"classes": list(names), "rows": "true class", "columns": "predicted class",
                                "counts": m.confusion_matrix(labels, predicted, k).tolist()}}
    if k == 2:
        out["auc"] = per_class[names[1]]
    return out


def multilabel_block(names: Sequence[str], truths: np.ndarray, probs: np.ndarray, *, n_boot: int, seed: int) -> dict:
    truths, probs = np.asarray(truths, np.float64) > 0.5, np.asarray(probs, np.float64)
    per_label = {}
    for i, name in enumerate(names):
        auc = m.roc_auc(probs[:, i], truths[:, i])
        ci = m.auc_interval(probs[:, i], truths[:, i], n=n_boot, seed=seed) if n_boot and not math.isnan(auc) else None
        per_label[name] = {"auc": _value(auc, ci), "positives": int(truths[:, i].sum()),
                           "accuracy_at_0.5": _finite(float(np.mean((probs[:, i] >= 0.5) == truths[:, i])))}

    def macro(idx: np.ndarray) -> float:
        return m.multilabel_metrics(probs[idx], truths[idx], [], names)["macro_auc"]

    macro_auc = macro(np.arange(len(truths)))
    ci = m.bootstrap_interval(macro, len(truths), n=n_boot, seed=seed) if n_boot and not math.isnan(macro_auc) else None
    return {"n": int(len(truths)), "labels": per_label, "macro_auc": _value(macro_auc, ci)}


def regression_block(names: Sequence[str], truths: np.ndarray, preds: np.ndarray, *, n_boot: int, seed: int) -> dict:
    truths, preds = np.asarray(truths, np.float64), np.asarray(preds, np.float64)
    per_target = {}
    for i, name in enumerate(names):
        t, p = truths[:, i], preds[:, i]
        rho = m.spearman(p, t)
        ci = m.paired_interval(m.spearman, p, t, n=n_boot, seed=seed) if n_boot and not math.isnan(rho) else None
        per_target[name] = {"spearman": _value(rho, ci), "pearson": _value(m.pearson(p, t)),
                            "mae": _value(m.mae(p, t)), "r2": _value(m.r2(p, t))}
    return {"n": int(len(truths)), "targets": per_target}


def score(pred: Predictions, *, threshold: float | None, n_boot: int, seed: int) -> dict:
    """The metrics block of one level (slides or patients)."""
    if pred.task == "classification":
        return classification_block(pred.names, pred.truths, pred.outputs, threshold=threshold, n_boot=n_boot, seed=seed)
    if pred.task == "multilabel":
        return multilabel_block(pred.names, pred.truths, pred.outputs, n_boot=n_boot, seed=seed)
    return regression_block(pred.names, pred.truths, pred.outputs, n_boot=n_boot, seed=seed)


def per_patient(pred: Predictions, how: str) -> tuple[Predictions, list[str]]:
    """The slides of each patient aggregated by ``how`` (max or mean of the outputs; for
    regression also of the targets). A patient's class or labels are those of its slides; a
    patient whose slides disagree is left out and returned in the second list. Slides without a
    patient id count as their own patient."""
    ids = [p if p is not None else f"slide:{s}" for p, s in zip(pred.patients, pred.slides, strict=True)]
    names, outputs = m.aggregate_by_patient(ids, pred.outputs, how)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(ids):
        groups.setdefault(p, []).append(i)
    keep, truths, mixed = [], [], []
    for j, p in enumerate(names):
        t = np.asarray(pred.truths)[groups[p]]
        if pred.task == "regression":
            truths.append(t.max(axis=0) if how == "max" else t.mean(axis=0))
        elif (t == t[0]).all():
            truths.append(t[0])
        else:
            mixed.append(p)
            continue
        keep.append(j)
    return Predictions(pred.task, pred.names, tuple(names[j] for j in keep), np.array(truths),
                       outputs[keep], None), mixed


def cohort_metrics(pred: Predictions, *, threshold: float | None = None, patient_aggregate: str = "mean",
                   n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"task", "slides": block, ["patients": block with "aggregate" and "mixed_patients"]}``."""
    out = {"task": pred.task, "names": list(pred.names), "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95},
           "slides": score(pred, threshold=threshold, n_boot=n_boot, seed=seed)}
    if pred.patients is not None and any(p is not None for p in pred.patients):
        patients, mixed = per_patient(pred, patient_aggregate)
        block = score(patients, threshold=threshold, n_boot=n_boot, seed=seed)
        block.update({"aggregate": f"{patient_aggregate} over each patient's slides", "mixed_patients": mixed})
        out["patients"] = block
    return out


# --- the printed table ------------------------------------------------------------------------

def _fmt(v: dict | float | None) -> str:
    if isinstance(v, dict):
        text = _fmt(v["value"])
        if v.get("ci95") and None not in v["ci95"]:
            text += " ({:.3f}–{:.3f})".format(*v["ci95"])
        return text
    return "n/a" if v is None else f"{v:.3f}"


def format_table(result: dict) -> str:
    """The metrics as text lines (what the CLI prints)."""
    lines = []
    for level in ("slides", "patients"):
        block = result.get(level)
        if block is None:
            continue
        title = f"{level} (n={block['n']})" + (f", {block['aggregate']}" if level == "patients" else "")
        lines.append(title)
        if result["task"] == "classification":
            for name, v in block["auc_per_class"].items():
                lines.append(f"  AUC {name:<20} {_fmt(v)}")
            lines.append(f"  macro AUC{'':<16} {_fmt(block['macro_auc'])}")
            lines.append(f"  accuracy {_fmt(block['accuracy'])}, balanced accuracy {_fmt(block['balanced_accuracy'])}"
                         f" (deciding {block['decision']})")
            cm = block["confusion_matrix"]
            width = max(len(c) for c in cm["classes"]) + 2
            lines.append("  confusion (rows true, columns predicted):")
            lines.append("  " + " " * width + "".join(f"{c:>{width}}" for c in cm["classes"]))
            for c, row in zip(cm["classes"], cm["counts"], strict=True):
                lines.append(f"  {c:>{width}}" + "".join(f"{x:>{width}}" for x in row))
        elif result["task"] == "multilabel":
            for name, v in block["labels"].items():
                lines.append(f"  AUC {name:<20} {_fmt(v['auc'])}  ({v['positives']} positive)")
            lines.append(f"  macro AUC{'':<16} {_fmt(block['macro_auc'])}")
        else:
            for name, v in block["targets"].items():
                lines.append(f"  {name}: Spearman {_fmt(v['spearman'])}, Pearson {_fmt(v['pearson'])}, "
                             f"MAE {_fmt(v['mae'])}, R² {_fmt(v['r2'])}")
        if level == "patients" and block.get("mixed_patients"):
            lines.append(f"  left out (slides disagree): {', '.join(block['mixed_patients'])}")
    lines.append(f"95% intervals: {result['bootstrap']['resamples']} bootstrap resamples, seed {result['bootstrap']['seed']}")
    return "\n".join(lines)
