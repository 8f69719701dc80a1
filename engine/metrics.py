"""Validation metrics without scikit-learn: loss, accuracy, ROC AUC (binary or macro one-vs-rest)."""

from __future__ import annotations

import math

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


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """``loss`` (mean), ``accuracy``, and ``auc``: ROC AUC of class 1 for two classes, else the
    mean over classes of one-vs-rest AUC (classes absent from ``labels`` are left out)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    out = {"loss": float(np.mean(losses)) if len(losses) else math.nan,
           "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)) if len(labels) else math.nan}
    n_classes = probabilities.shape[1] if probabilities.ndim == 2 else 0
    if n_classes == 2:
        out["auc"] = roc_auc(probabilities[:, 1], labels == 1)
    else:
        aucs = [roc_auc(probabilities[:, c], labels == c) for c in range(n_classes)]
        aucs = [a for a in aucs if not math.isnan(a)]
        out["auc"] = float(np.mean(aucs)) if aucs else math.nan
    return out


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
