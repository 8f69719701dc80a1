"""The files of an evaluation: ``predictions.csv`` (written and read back) and ``metrics.json``.

``predictions.csv`` columns: ``slide``, ``patient`` (when the labels have one), then per target
the truth under its own column name and the model's output as ``pred_<target>``; a
classification also gets ``prob_<class>`` for each class (``pred_<target>`` is then the
predicted class). Written through :mod:`engine.io.atomic`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from engine.errors import ResultsError
from engine.evaluate.report import Predictions
from engine.io import atomic

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
PLOT = "plot.svg"


def _number(x: float) -> str:
    return repr(float(x))  # round-trips exactly


def predictions_text(pred: Predictions, targets: tuple[str, ...], predicted: np.ndarray | None = None) -> str:
    """The CSV text. ``targets``: the labels' column names (classification: its one label column);
    ``predicted``: a classification's decided class per slide (default: the most probable)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    with_patient = pred.patients is not None
    header = ["slide"] + (["patient"] if with_patient else [])
    if pred.task == "classification":
        header += [targets[0], f"pred_{targets[0]}"] + [f"prob_{c}" for c in pred.names]
    else:
        for t in pred.names:
            header += [t, f"pred_{t}"]
    w.writerow(header)
    if predicted is None and pred.task == "classification":
        predicted = np.asarray(pred.outputs).argmax(axis=1)
    for i, slide in enumerate(pred.slides):
        row = [slide] + ([pred.patients[i] or ""] if with_patient else [])
        if pred.task == "classification":
            row += [pred.names[int(pred.truths[i])], pred.names[int(predicted[i])]]
            row += [_number(p) for p in pred.outputs[i]]
        else:
            for j in range(len(pred.names)):
                truth = pred.truths[i][j]
                row += [str(int(truth)) if pred.task == "multilabel" else _number(truth), _number(pred.outputs[i][j])]
        w.writerow(row)
    return out.getvalue()


def write_predictions(folder: Path, pred: Predictions, targets: tuple[str, ...], predicted=None) -> Path:
    return atomic.write_text(Path(folder) / PREDICTIONS, predictions_text(pred, targets, predicted))


def read_predictions(path: str | Path, task: str, names: tuple[str, ...] | None = None) -> Predictions:
    """A ``predictions.csv`` read back (for re-scoring); ``names`` are the classes of a
    classification (default: the ``prob_<class>`` columns in order)."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"could not read predictions {path}: {exc}") from exc
    if not rows:
        raise ResultsError(f"{path} holds no predictions")
    columns = list(rows[0])
    patients = tuple(r["patient"] or None for r in rows) if "patient" in columns else None
    slides = tuple(r["slide"] for r in rows)
    if task == "classification":
        names = names or tuple(c[len("prob_"):] for c in columns if c.startswith("prob_"))
        target = next(c for c in columns if c.startswith("pred_"))[len("pred_"):]
        index = {c: i for i, c in enumerate(names)}
        truths = np.array([index[r[target]] for r in rows], np.int64)
        outputs = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows])
    else:
        names = names or tuple(c[len("pred_"):] for c in columns if c.startswith("pred_"))
        truths = np.array([[float(r[t]) for t in names] for r in rows])
        outputs = np.array([[float(r[f"pred_{t}"]) for t in names] for r in rows])
    return Predictions(task, tuple(names), slides, truths, outputs, patients)


def write_metrics(folder: Path, metrics: dict) -> Path:
    return atomic.write_json(Path(folder) / METRICS, metrics, ensure_ascii=False, allow_nan=False)
