"""The *Score against annotations* panel: for the shown map layer and a chosen annotation class,
the share of the map's mass inside the class, the share an even map would score, and the pixel
AUC (computed by :class:`~viewer.controllers.scoring.Scoring` on a worker)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from engine.annotations import CAMELYON16_TUMOR_CLASSES
from viewer.controllers.scoring import Scoring

#: The class choice that scores against every annotation with an area.
EVERY_CLASS = "(every annotation with an area)"


def percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def number(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


class ScorePanel(QWidget):
    def __init__(self, scoring: Scoring, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scoring = scoring
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("The annotation class the map is scored against")
        self.tissue = QCheckBox("Tissue cells only")
        self.tissue.setToolTip("Count only map cells on tissue (glass is easy to rule out and flatters every score)")
        self.fields = {name: QLabel("—") for name in ("Layer", "Mass inside", "Even map", "Lift", "Pixel AUC", "Cells")}
        tips = {"Mass inside": "The share of the map's summed value that falls inside the class's outlines",
                "Even map": "The share of cells inside the outlines: what a map spread evenly would score",
                "Lift": "Mass inside divided by the even map's share (1: no better than even)",
                "Pixel AUC": "The map value as a per-cell detector of the class (0.5: chance)",
                "Cells": "Cells scored (computed, and on tissue when asked) and how many lie inside"}
        form = QFormLayout()
        form.addRow("Class", self.class_combo)
        form.addRow("", self.tissue)
        for name, label in self.fields.items():
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setToolTip(tips.get(name, ""))
            form.addRow(name, label)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.class_combo.activated.connect(self._on_class)
        self.tissue.toggled.connect(scoring.set_tissue_only)
        scoring.classes_changed.connect(self.set_classes)
        scoring.scored.connect(self.show_scores)
        scoring.unavailable.connect(self.show_unavailable)
        self.set_classes(scoring.class_names())

    def set_classes(self, names: list[str]) -> None:
        """Offer ``names``; keep the chosen class while it exists, else take a tumour class
        (CAMELYON's names) when there is one, else every annotation."""
        chosen = self.scoring.class_name
        if chosen not in names:
            chosen = next((n for n in names if n in CAMELYON16_TUMOR_CLASSES), None)
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem(EVERY_CLASS, None)
        for name in names:
            self.class_combo.addItem(name, name)
        self.class_combo.setCurrentIndex(max(0, self.class_combo.findData(chosen)) if chosen is not None else 0)
        self.class_combo.blockSignals(False)
        self.scoring.set_class(chosen)

    def _on_class(self, index: int) -> None:
        self.scoring.set_class(self.class_combo.itemData(index))

    def show_scores(self, result: dict) -> None:
        f = self.fields
        f["Layer"].setText(result["layer"])
        f["Mass inside"].setText(percent(result["mass_inside"]))
        f["Even map"].setText(percent(result["even_share"]))
        even, mass = result["even_share"], result["mass_inside"]
        f["Lift"].setText(number(mass / even) + "×" if even and not math.isnan(even) and not math.isnan(mass) else "—")
        f["Pixel AUC"].setText(number(result["pixel_auc"]))
        f["Cells"].setText(f"{result['cells_inside']:,} of {result['cells']:,} inside ({result['over']})")
        self.status.setText("")

    def show_unavailable(self, message: str) -> None:
        for label in self.fields.values():
            label.setText("—")
        self.status.setText(message)
