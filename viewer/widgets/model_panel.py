"""The model panel: choose a model (file dialog or recent models), see its card, set the run's
options, and ask for a run on the whole slide, the current view, a drawn rectangle or the selected
annotations.

The panel is bound to two models: the options write into and follow
:class:`~viewer.model.inference.InferenceSettings`, and the card, status, recent list and the
run buttons follow :class:`~viewer.model.inference.ModelChoice`. It reads no file: it asks for a
card through ``model_chosen`` and a run through ``run_requested``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.specs import DEVICES
from viewer.model.inference import InferenceSettings, ModelChoice

MODEL_FILTER = "StreamSlide models (*.json *.safetensors);;All files (*)"


def describe_input(card) -> str:
    if getattr(card, "input_mpp", None):
        return f"{card.input_mpp:g} µm/px"
    return f"level {getattr(card, 'input_level', 0) or 0}"


#: The provenance entry that says what a model is for (and not for); shown on its own line.
INTENDED_USE = "intended_use"


def describe_provenance(provenance) -> str:
    if isinstance(provenance, dict):
        return "; ".join(f"{k}: {v}" for k, v in provenance.items() if k != INTENDED_USE) or "—"
    return str(provenance or "—")


def describe_intended_use(provenance) -> str:
    use = provenance.get(INTENDED_USE) if isinstance(provenance, dict) else None
    return str(use) if use else "—"


class ModelPanel(QWidget):
    model_chosen = Signal(str)
    #: "slide", "view" or "selection" (a region run starts when its rectangle is drawn).
    run_requested = Signal(str)

    def __init__(self, settings: InferenceSettings, model: ModelChoice, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings, self.model = settings, model
        self._recent_shown: list[str] | None = None
        self.recent = QComboBox()
        self.recent.setToolTip("Recently used models")
        self.recent.setMinimumContentsLength(12)
        self.recent.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.load_button = QPushButton("Load model…")
        self.card_fields = {name: QLabel("—") for name in ("Architecture", "Classes", "Input", "Tile size", "Intended use", "From",
                                                          "SHA-256")}
        card_box = QGroupBox("Model card")
        form = QFormLayout(card_box)
        for name, label in self.card_fields.items():
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(name, label)
        self.status = QLabel("No model loaded")
        self.status.setWordWrap(True)

        self.slide_button = QPushButton("Whole slide")
        self.view_button = QPushButton("Current view")
        self.region_button = QPushButton("Draw region")
        self.region_button.setCheckable(True)
        self.region_button.setToolTip("Drag a rectangle on the slide to run on it (or shift-drag at any time)")
        self.selection_button = QPushButton("Selection")
        self._selected = 0  # annotations with an area selected on the shown slide
        self.saliency = QCheckBox("Saliency map")
        self.tissue_mask = QCheckBox("Tissue mask")
        self.tissue_mask.setToolTip("Compute and pool only the slide's tissue (found on its thumbnail): blocks on glass "
                                    "are skipped and their cells left empty; the mask is shown as the 'tissue' layer. "
                                    "A loaded model sets it as it was trained")
        self.low_memory = QCheckBox("Low memory")
        self.low_memory.setToolTip("Give freed memory back to the system after every tile: peak memory stays flat "
                                   "with the slide's size, at 10-20% more time (CPU)")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto: the GPU when there is one")

        top = QHBoxLayout()
        top.addWidget(self.recent, 1)
        top.addWidget(self.load_button)
        run_box = QGroupBox("Run on")
        # Two by two, so the dock stays narrow enough to leave the slide most of a small window.
        runs = QGridLayout()
        for i, button in enumerate((self.slide_button, self.view_button, self.region_button, self.selection_button)):
            runs.addWidget(button, i // 2, i % 2)
        options = QGridLayout()
        options.addWidget(self.saliency, 0, 0)
        options.addWidget(self.tissue_mask, 0, 1)
        options.addWidget(self.low_memory, 1, 0)
        device = QHBoxLayout()
        device.addWidget(QLabel("Device"))
        device.addWidget(self.device, 1)
        options.addLayout(device, 1, 1)
        run_layout = QVBoxLayout(run_box)
        run_layout.addLayout(runs)
        run_layout.addLayout(options)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(card_box)
        layout.addWidget(self.status)
        layout.addWidget(run_box)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.choose_model)
        self.recent.activated.connect(self._on_recent)
        self.slide_button.clicked.connect(self._run_slide)
        self.view_button.clicked.connect(self._run_view)
        self.selection_button.clicked.connect(lambda: self.run_requested.emit("selection"))
        # The user's edits go into the settings; the widgets follow the settings' changes.
        self.saliency.toggled.connect(lambda on: settings.set(saliency=on))
        self.tissue_mask.toggled.connect(lambda on: settings.set(tissue_mask=on))
        self.low_memory.toggled.connect(lambda on: settings.set(low_memory=on))
        self.device.currentTextChanged.connect(lambda name: settings.set(device=name))
        self.region_button.toggled.connect(lambda on: settings.set(region_mode=on))
        settings.changed.connect(self._show_setting)
        model.changed.connect(self._show_model)
        for name in InferenceSettings.FIELDS:
            self._show_setting(name)
        self._show_model()

    # -- following the models ------------------------------------------------------------------
    def _show_setting(self, name: str) -> None:
        value = getattr(self.settings, name)
        if name == "device":
            self.device.setCurrentText(value)
        else:
            {"saliency": self.saliency, "low_memory": self.low_memory, "region_mode": self.region_button,
             "tissue_mask": self.tissue_mask}[name].setChecked(value)

    def _show_model(self) -> None:
        model = self.model
        if model.recent.paths != self._recent_shown:
            self.set_recent(model.recent.paths)
        if model.card is not None:
            self.show_card(model.card)
        if model.error is not None:
            self.status.setText(f"Could not load the model: {model.error}")
        elif model.path is not None:
            # A break after every "/": a long path wraps instead of widening the dock (and so
            # narrowing the slide view) by its own length.
            self.status.setText(f"Loaded {str(model.path).replace('/', '/' + chr(0x200B))}")
        for button in (self.slide_button, self.view_button, self.region_button):
            button.setEnabled(model.runnable)
        self._show_selection_scope()

    def set_selection(self, count: int) -> None:
        """The shown slide has ``count`` selected annotations with an area."""
        self._selected = count
        self._show_selection_scope()

    def _show_selection_scope(self) -> None:
        self.selection_button.setEnabled(self.model.runnable and self._selected > 0)
        if self._selected:
            self.selection_button.setToolTip(f"Run inside the {self._selected} selected annotation"
                                             f"{'s' if self._selected > 1 else ''} (their union, exactly)")
        else:
            self.selection_button.setToolTip("Select annotations with an area (polygon, rectangle, ellipse) "
                                             "to run inside them")

    # -- choosing ------------------------------------------------------------------------------
    def set_recent(self, paths: list[str]) -> None:
        self._recent_shown = list(paths)
        self.recent.clear()
        for path in paths:
            self.recent.addItem(Path(path).name if Path(path).name != "model.json" else Path(path).parent.name, path)
            self.recent.setItemData(self.recent.count() - 1, path, Qt.ItemDataRole.ToolTipRole)

    def choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a model", "", MODEL_FILTER)
        if path:
            self.model_chosen.emit(path)

    def _on_recent(self, index: int) -> None:
        self.model_chosen.emit(self.recent.itemData(index))

    def show_card(self, card) -> None:
        f = self.card_fields
        f["Architecture"].setText(str(card.architecture))
        f["Classes"].setText(", ".join(card.classes))
        f["Input"].setText(describe_input(card))
        f["Tile size"].setText(f"{card.tile_size} px" if card.tile_size else "—")
        f["Intended use"].setText(describe_intended_use(card.provenance))
        f["From"].setText(describe_provenance(card.provenance))
        f["SHA-256"].setText(f"{card.sha256[:16]}…" if card.sha256 else "—")
        f["SHA-256"].setToolTip(card.sha256 or "")

    # -- running -------------------------------------------------------------------------------
    def _run_slide(self) -> None:
        self.run_requested.emit("slide")

    def _run_view(self) -> None:
        self.run_requested.emit("view")
