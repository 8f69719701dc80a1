"""The Cohort panel's state without Qt: where the labelled slides come from, the job's state and
progress text, and the sortable table of an evaluation's rows (slide, patient, target,
prediction, error) that a thin Qt adapter shows (:mod:`viewer.widgets.cohort_table`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from viewer.model.notify import Fields, Notifier

#: Where the cohort's labels come from: the slide browser's or an imported CSV.
COHORT_SOURCES = ("browser", "csv")
COLUMNS = ("Slide", "Patient", "Target", "Prediction", "Error")
BUSY = ("running", "stopping")


def new_evaluation_name() -> str:
    return time.strftime("eval-%Y%m%d-%H%M%S")


def eta_text(done: int, total: int, eta_s: float | None) -> str:
    """"3 of 8 slides · about 1 min 20 s left" (no ETA before the first slide is done)."""
    text = f"{done} of {total} slides"
    if eta_s is None or done == 0 or done >= total or not math.isfinite(eta_s):
        return text
    s = int(round(eta_s))
    left = f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
    return f"{text} · about {left} left"


def summary_text(task: str, metrics: dict) -> str:
    """The headline metric of an evaluation's ``metrics.json`` (slide level), with its interval."""
    block = metrics.get("slides") or {}

    def fmt(v) -> str:
        if isinstance(v, dict):
            ci = v.get("ci95")
            value = "n/a" if v.get("value") is None else f"{v['value']:.3f}"
            return value + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci and None not in ci else "")
        return "n/a" if v is None else f"{v:.3f}"

    n = block.get("n", metrics.get("evaluated", 0))
    if task == "regression":
        parts = [f"{name}: Spearman {fmt(m.get('spearman'))}, MAE {fmt(m.get('mae'))}"
                 for name, m in (block.get("targets") or {}).items()]
    elif task == "multilabel":
        parts = [f"macro AUC {fmt(block.get('macro_auc'))}"]
    else:
        parts = [f"AUC {fmt(block.get('auc', block.get('macro_auc')))}", f"accuracy {fmt(block.get('accuracy'))}"]
    return f"{n} slides · " + "; ".join(parts)


class CohortForm(Fields):
    """What the next evaluation runs on, and how the running one is doing."""

    FIELDS = ("source", "csv_path", "out_root", "state", "progress_text", "summary", "failed_text")

    def __init__(self) -> None:
        super().__init__()
        self.source, self.csv_path = "browser", None
        self.out_root = str(Path.home() / "StreamSlide" / "evaluations")
        self.state = "idle"  # idle, running, stopping, done, cancelled, failed
        self.progress_text, self.summary, self.failed_text = "", "", ""

    @property
    def busy(self) -> bool:
        return self.state in BUSY


def _key(row, column: int):
    value = (Path(row.slide).name, row.patient or "", row.target, row.prediction, row.error)[column]
    # Numbers before text, so a column of numbers sorts as numbers; NaN last.
    if isinstance(value, float):
        return (0, math.inf if math.isnan(value) else value, "")
    return (1, 0.0, str(value).lower())


class CohortTable:
    """The rows of an evaluation (``engine.evaluate.results.CohortRow``), sorted by a column.
    ``reset`` notifies a full change (new rows or a new order)."""

    def __init__(self) -> None:
        self.rows: list = []
        self.sort_column, self.descending = 4, True  # largest error first: the slides to look at
        self.reset = Notifier()

    def set_rows(self, rows) -> None:
        self.rows = list(rows)
        self._sort()

    def sort(self, column: int, descending: bool) -> None:
        self.sort_column, self.descending = column, descending
        self._sort()

    def _sort(self) -> None:
        self.rows.sort(key=lambda r: _key(r, self.sort_column), reverse=self.descending)
        self.reset.emit()

    def __len__(self) -> int:
        return len(self.rows)

    def text(self, row: int, column: int) -> str:
        r = self.rows[row]
        value = (Path(r.slide).name, r.patient or "", r.target, r.prediction, r.error)[column]
        if isinstance(value, float):
            return f"{value:+.3f}" if column == 4 and r.target_name != "label" else f"{value:.3f}"
        return str(value) if column != 2 or r.target_name == "label" else f"{r.target_name}: {value}"

    def tooltip(self, row: int) -> str:
        r = self.rows[row]
        return r.slide + ("" if r.maps else "\n(no kept maps: double-click opens the slide only)")
