"""Metrics without scikit-learn or scipy (numpy only), for validation each epoch and cohort evaluation.

Classification: loss, accuracy, balanced accuracy, ROC AUC (binary, or macro one-vs-rest) and the
confusion matrix. Multilabel: per-label and macro ROC AUC. Regression: Spearman and Pearson
correlation, MAE and R². Seeded bootstrap 95% intervals (AUC resampled within classes, so every
resample has both), and per-patient aggregation of slide outputs.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative
    (ties count half), via the Mann-Whitney rank sum. NaN when either class is absent."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_of_finite(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _mean_loss(losses) -> float:
    return float(np.mean(losses)) if len(losses) else math.nan


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return out


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """The mean over the classes present in ``labels`` of the share of that class predicted right."""
    cm = confusion_matrix(labels, predicted, n_classes)
    support = cm.sum(axis=1)
    recalls = [cm[c, c] / support[c] for c in range(n_classes) if support[c]]
    return float(np.mean(recalls)) if recalls else math.nan


def class_aucs(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    """One-vs-rest ROC AUC of each class (NaN for a class absent from ``labels`` or alone in it)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    return [roc_auc(probabilities[:, c], labels == c) for c in range(probabilities.shape[1])]


def predicted_classes(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The arg-max class; with two classes and a ``threshold``, class 1 when its probability >= it."""
    probabilities = np.asarray(probabilities, np.float64)
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per distinct
    score (tied scores move both rates at once, the diagonal step the AUC counts half)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tps, fps = np.cumsum(p)[last_of_tie], np.cumsum(~p)[last_of_tie]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, losses: np.ndarray,
                           threshold: float | None = None) -> dict[str, float]:
    """``loss`` (mean), ``accuracy``, ``balanced_accuracy`` (arg-max, or class 1 at ``threshold``
    with two classes), ``macro_auc`` (mean one-vs-rest AUC over the classes present), and ``auc``:
    ROC AUC of class 1 for two classes, else the macro AUC."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    n_classes = probabilities.shape[1] if probabilities.ndim == 2 else 0
    out = {"loss": _mean_loss(losses), "accuracy": math.nan, "balanced_accuracy": math.nan}
    if len(labels):
        predicted = predicted_classes(probabilities, threshold)
        out["accuracy"] = float(np.mean(predicted == labels))
        out["balanced_accuracy"] = balanced_accuracy(labels, predicted, n_classes)
    aucs = class_aucs(probabilities, labels) if n_classes else []
    out["macro_auc"] = _mean_of_finite(aucs)
    out["auc"] = aucs[1] if n_classes == 2 else out["macro_auc"]
    return out


def multilabel_metrics(probabilities: np.ndarray, targets: np.ndarray, losses: np.ndarray,
                       names: Sequence[str]) -> dict[str, float]:
    """``loss``, ``auc_<name>`` per label, ``macro_auc`` (also as ``auc``: the mean over labels
    with both values present) and ``accuracy`` (share of slide-label pairs right at 0.5)."""
    probabilities = np.asarray(probabilities, np.float64).reshape(len(targets), len(names))
    targets = np.asarray(targets, np.float64).reshape(len(targets), len(names)) > 0.5
    out = {"loss": _mean_loss(losses),
           "accuracy": float(np.mean((probabilities >= 0.5) == targets)) if len(targets) else math.nan}
    aucs = [roc_auc(probabilities[:, i], targets[:, i]) for i in range(len(names))]
    out.update({f"auc_{name}": a for name, a in zip(names, aucs, strict=True)})
    out["macro_auc"] = out["auc"] = _mean_of_finite(aucs)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two values or when either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties share their mean rank)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    return pearson(_average_ranks(x), _average_ranks(y))


def mae(predicted: np.ndarray, target: np.ndarray) -> float:
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    return float(np.mean(np.abs(predicted - target))) if len(target) else math.nan


def r2(predicted: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (NaN when the target is constant)."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    ss_tot = float(((target - target.mean()) ** 2).sum()) if len(target) else 0.0
    return 1.0 - float(((target - predicted) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan


REGRESSION_METRICS = {"spearman": spearman, "pearson": pearson, "mae": mae, "r2": r2}


def regression_metrics(predicted: np.ndarray, targets: np.ndarray, losses: np.ndarray,
                       names: Sequence[str]) -> dict[str, float]:
    """``loss``, and ``spearman``, ``pearson``, ``mae``, ``r2`` (in the targets' units) averaged
    over targets; with several targets also ``<metric>_<name>`` for each."""
    predicted = np.asarray(predicted, np.float64).reshape(len(targets), len(names))
    targets = np.asarray(targets, np.float64).reshape(len(targets), len(names))
    out = {"loss": _mean_loss(losses)}
    for metric, fn in REGRESSION_METRICS.items():
        per = [fn(predicted[:, i], targets[:, i]) for i in range(len(names))]
        out[metric] = _mean_of_finite(per)
        if len(names) > 1:
            out.update({f"{metric}_{name}": v for name, v in zip(names, per, strict=True)})
    return out


# --- intervals and patients ------------------------------------------------------------------

def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_items: int, *, n: int = 2000, seed: int = 0,
                       strata: np.ndarray | None = None, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` seeded resamples of
    ``range(n_items)``; with ``strata`` each stratum is resampled apart (its size kept).
    Resamples whose statistic is NaN are left out; (NaN, NaN) when none is finite."""
    rng = np.random.default_rng(seed)
    groups = ([np.arange(n_items)] if strata is None
              else [np.flatnonzero(strata == s) for s in np.unique(strata)])
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)]) if n_items else np.arange(0)
        v = statistic(idx)
        if not math.isnan(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def auc_interval(scores: Sequence[float], positive: Sequence[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of a ROC AUC, positives and negatives resampled apart (so every
    resample has both): with 24 test slides, chance alone reaches AUCs near 0.7."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    return bootstrap_interval(lambda i: roc_auc(scores[i], positive[i]), len(scores), n=n, seed=seed,
                              strata=~positive)  # positives first, as bench/resolution.py drew them


def paired_interval(fn: Callable[[np.ndarray, np.ndarray], float], x: Sequence[float], y: Sequence[float],
                    n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``fn(x, y)`` (e.g. Spearman) with slides resampled in pairs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return bootstrap_interval(lambda i: fn(x[i], y[i]), len(x), n=n, seed=seed)


PATIENT_AGGREGATES = ("max", "mean")


def aggregate_by_patient(patients: Sequence[str], values: np.ndarray, how: str = "mean") -> tuple[list[str], np.ndarray]:
    """(patients in first-seen order, one row per patient): the ``max`` or ``mean`` over the rows
    (slides) of each patient. Targets of one patient are the same on each of its slides, so
    aggregating them with either gives the patient's target."""
    if how not in PATIENT_AGGREGATES:
        raise ValueError(f"patient aggregate '{how}' is not one of {', '.join(PATIENT_AGGREGATES)}")
    values = np.asarray(values, np.float64)
    order: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        order.setdefault(p, []).append(i)
    reduce = np.max if how == "max" else np.mean
    rows = [reduce(values[idx], axis=0) for idx in order.values()]
    return list(order), np.array(rows).reshape((len(rows),) + values.shape[1:])


def saliency_localisation(saliency: np.ndarray, lesion: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, float]:
    """How well a saliency map of a positive slide falls on its lesions (all maps on one grid).

    ``mass_in_lesion``: the share of saliency (summed over cells) inside the lesion mask, with
    ``lesion_share``, the share of cells that are lesion (what a map spread evenly would score);
    ``pixel_auc``: ROC AUC of the saliency value as a per-cell lesion detector. With ``tissue``
    only tissue cells count (glass is easy to rule out and would flatter both).
    """
    saliency = np.nan_to_num(np.asarray(saliency, np.float64))
    lesion = np.asarray(lesion, bool)
    if saliency.shape != lesion.shape:
        raise ValueError(f"saliency {saliency.shape} and lesion mask {lesion.shape} differ in shape")
    keep = np.ones(lesion.shape, bool) if tissue is None else np.asarray(tissue, bool)
    s, m = np.abs(saliency[keep]), lesion[keep]
    total = s.sum()
    return {"mass_in_lesion": float(s[m].sum() / total) if total > 0 else math.nan,
            "lesion_share": float(m.mean()) if m.size else math.nan,
            "pixel_auc": roc_auc(s, m)}
