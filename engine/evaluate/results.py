"""An evaluation folder read back for display (torch-free): per-slide rows, the ROC curves or the
predicted-against-true points, the metrics and the kept maps. What ``plot.svg`` draws, as numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import ResultsError
from engine.evaluate.files import METRICS, PREDICTIONS, read_predictions
from engine.evaluate.report import format_table
from engine.metrics import roc_auc, roc_curve


@dataclass(frozen=True)
class CohortRow:
    """One slide and target: ``target`` the truth (class name or number), ``prediction`` the
    model's (class name or number), ``error``: 1 - the true class's probability (classification),
    |probability - truth| (multilabel) or prediction - truth (regression)."""

    slide: str
    patient: str | None
    target_name: str
    target: str | float
    prediction: str | float
    error: float
    maps: str | None = None  # the slide's kept maps.npz (absolute), when the evaluation kept them


@dataclass(frozen=True)
class Curve:
    """One ROC curve (``x`` false positive rate, ``y`` true positive rate) or one target's
    predicted (``y``) against true (``x``) points; ``label`` says which, with its AUC or n."""

    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class EvaluationFiles:
    out_dir: str
    task: str
    names: tuple[str, ...]
    rows: tuple[CohortRow, ...]
    curves: tuple[Curve, ...]
    metrics: dict
    table: str
    failed: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """"roc" (classification, multilabel) or "scatter" (regression)."""
        return "scatter" if self.task == "regression" else "roc"


def read_evaluation(out_dir: str | Path) -> EvaluationFiles:
    """``metrics.json`` and ``predictions.csv`` of an evaluation in ``out_dir``. A folder whose run
    evaluated no slide gives no rows; a missing or unreadable ``metrics.json`` raises
    :class:`~engine.errors.ResultsError` naming it."""
    out = Path(out_dir)
    try:
        metrics = json.loads((out / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"could not read {out / METRICS}: {exc}; is {out} an evaluation's folder?") from exc
    task, names = metrics.get("task", "classification"), tuple(metrics.get("names", ()))
    failed = tuple(metrics.get("failed", ()))
    if not metrics.get("evaluated"):
        return EvaluationFiles(str(out), task, names, (), (), metrics, "no slide was evaluated", failed)
    pred = read_predictions(out / PREDICTIONS, task, names or None)
    maps = {slide: str(out / rel) for slide, rel in (metrics.get("maps") or {}).items()}
    rows = tuple(_rows(pred, maps))
    return EvaluationFiles(str(out), task, pred.names, rows, tuple(_curves(pred)), metrics, format_table(metrics), failed)


def _rows(pred, maps: dict[str, str]):
    truths, outputs = np.asarray(pred.truths), np.asarray(pred.outputs, np.float64)
    for i, slide in enumerate(pred.slides):
        patient = pred.patients[i] if pred.patients is not None else None
        if pred.task == "classification":
            t = int(truths[i])
            yield CohortRow(slide, patient, "label", pred.names[t], pred.names[int(outputs[i].argmax())],
                            float(1.0 - outputs[i, t]), maps.get(slide))
            continue
        for j, name in enumerate(pred.names):
            truth, out = float(truths[i, j]), float(outputs[i, j])
            error = abs(out - truth) if pred.task == "multilabel" else out - truth
            yield CohortRow(slide, patient, name, truth, out, float(error), maps.get(slide))


def _curves(pred):
    truths, outputs = np.asarray(pred.truths), np.asarray(pred.outputs, np.float64)
    if pred.task == "regression":
        for j, name in enumerate(pred.names):
            yield Curve(f"{name} (n={len(truths)})", truths[:, j].astype(np.float64), outputs[:, j])
        return
    if pred.task == "classification":
        curves = [(name, outputs[:, c], truths == c) for c, name in enumerate(pred.names)]
        if len(pred.names) == 2:
            curves = curves[1:]  # binary: the positive class's curve (the other is its mirror)
    else:
        curves = [(name, outputs[:, i], truths[:, i] > 0.5) for i, name in enumerate(pred.names)]
    for name, scores, positive in curves:
        fpr, tpr = roc_curve(scores, positive)
        auc = roc_auc(scores, positive)
        label = f"{name} (AUC {auc:.3f})" if np.isfinite(auc) else f"{name} (one class only)"
        yield Curve(label, np.asarray(fpr, np.float64), np.asarray(tpr, np.float64))
