"""Slide-level labels the user gives in the slide browser, kept in memory and saved as CSV.

The table is plain Python (no Qt) so it is tested without a window; it notifies ``changed()``
whenever labels change, so the slide browser's label column follows it. The CSV it writes is the
engine's format, ``slide,label`` with a header, slide paths relative to the CSV's folder (so a
folder of slides plus its labels file can be moved together). Reading a CSV goes through the
engine's parser on a worker, which checks every row and that every slide exists.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable

from engine.api import read_labels
from viewer.model.notify import Notifier


class LabelTable:
    """Label per slide path (absolute, resolved). An empty label removes the slide."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}
        self.changed = Notifier()

    def set_labels(self, paths: Iterable[str | Path], label: str | None) -> None:
        """Give every path ``label`` (None or blank: remove them)."""
        for path in paths:
            self._set(path, label)
        self.changed.emit()

    def _set(self, path: str | Path, label: str | None) -> None:
        key = str(Path(path).resolve())
        label = (label or "").strip()
        if label:
            self._labels[key] = label
        else:
            self._labels.pop(key, None)

    def get(self, path: str | Path) -> str | None:
        return self._labels.get(str(Path(path).resolve()))

    def replace(self, rows: dict[str, str]) -> None:
        """Replace every label (e.g. with an imported CSV's rows: absolute path -> label)."""
        self._labels = {}
        for path, label in rows.items():
            self._set(path, label)
        self.changed.emit()

    @property
    def classes(self) -> list[str]:
        return sorted(set(self._labels.values()))

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._labels.items())

    def __len__(self) -> int:
        return len(self._labels)


def write_labels_csv(path: str | Path, rows: list[tuple[str, str]]) -> str:
    """Worker job: write ``slide,label`` rows (slide paths made relative to the CSV) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("slide", "label"))
        for slide, label in rows:
            writer.writerow((os.path.relpath(slide, path.parent), label))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return str(path)


def read_labels_rows(path: str) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """Worker job: parse and check a labels CSV (or class folders) with the engine's reader.
    Returns (path, absolute slide path -> label, classes); a bad file raises ``LabelsError``."""
    labels = read_labels(path)
    return path, {str(r.path): labels.classes[r.label] for r in labels.records}, labels.classes
