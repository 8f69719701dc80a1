"""Slide-level labels the user gives in the slide browser, kept in memory and saved as CSV.

The table is plain Python (no Qt) so it is tested without a window; it notifies ``changed()``
whenever labels change, so the slide browser's label column follows it. Writing and reading
labels CSVs are worker jobs (:mod:`viewer.workers.training_files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

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
