"""The training form's widgets: labels, base model, input, schedule, device, run folder; Start,
Pause, Resume, Cancel. Bound to a :class:`~viewer.model.training_form.TrainingForm`: every edit
is written into it, and the widgets follow its changes (the run's state enables the buttons);
:mod:`viewer.controllers.fine_tuning` reads the form to start a run.

Pause has no engine counterpart: it saves the last checkpoint at the next step and stops, and
Resume starts again from that checkpoint (exactly: same data order, optimiser and RNG state).
The note under the buttons says so, because a "pause" that frees the device is not a freeze.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QWidget,
)

from engine.specs import DEVICES, HEADS
from viewer.model.training_form import BASES, INPUT_UNITS, LABEL_SOURCES, RESUMABLE_STATES, TASKS, TrainingForm

#: What the combo boxes show for the form's choices, in the form's order.
LABEL_SOURCE_TEXTS = ("Slide browser labels", "CSV file")
BASE_TEXTS = ("Random initialisation", "ImageNet weights file", "Loaded model (Model panel)")
PAUSE_NOTE = ("Pause saves the last checkpoint at the next step and stops; Resume continues "
              "from it exactly (same data order and optimiser state).")


HEAD_TOOLTIP = "How the trunk's map becomes one prediction: max, average, GeM pooling or attention"

class ModelCombo(QComboBox):
    """Editable architecture list that asks for the registry's names the first time it opens:
    listing them imports torch (on a worker), which a viewer session that never trains should not pay."""

    first_popup = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._asked = False

    def showPopup(self) -> None:
        if not self._asked:
            self._asked = True
            self.first_popup.emit()
        super().showPopup()


def _inline_row(*widgets: QWidget) -> QHBoxLayout:
    """Fields and their labels on one grid row, spaced so a label never touches the field before it."""
    row = QHBoxLayout()
    row.setSpacing(8)
    for w in widgets:
        row.addWidget(w)
    return row


class TrainingPanel(QWidget):
    import_csv_requested = Signal(str)
    save_csv_requested = Signal(str)

    def __init__(self, form: TrainingForm, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.form = form
        self.labels_source = QComboBox()
        self.labels_source.addItems(LABEL_SOURCE_TEXTS)
        self.labels_source.setToolTip("Right-click slides in the slide browser to label them, or import a CSV "
                                      "(slide,label[,split], paths relative to the CSV)")
        self.import_button = QPushButton("Import CSV…")
        self.save_labels_button = QPushButton("Save CSV…")
        self.save_labels_button.setToolTip("Save the slide browser's labels as slide,label (paths relative to the CSV)")
        self.labels_summary = QLabel()
        self.labels_summary.setWordWrap(True)

        self.task = QComboBox()
        self.task.addItems(list(TASKS))
        self.task.setToolTip("classification: one label column of classes; multilabel: several 0/1 columns; "
                             "regression: numeric columns (monitored by Spearman)")
        self.targets = QListWidget()
        self.targets.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.targets.setFlow(QListWidget.Flow.LeftToRight)
        self.targets.setWrapping(True)
        self.targets.setMaximumHeight(52)
        self.targets.setToolTip("The imported CSV's columns to train on (tick them)")
        self.targets_hint = QLabel("import a CSV to choose its columns")
        self.targets_hint.setStyleSheet("color: #555")
        self.head = QComboBox()
        self.head.addItems(list(HEADS))
        self.head.setToolTip(HEAD_TOOLTIP)
        self.tissue_mask = QCheckBox("Tissue mask")
        self.tissue_mask.setToolTip("Only tissue cells take part in the pool (blocks without tissue are skipped)")
        self.freeze_trunk_epochs = QSpinBox()
        self.freeze_trunk_epochs.setRange(0, 10000)
        self.freeze_trunk_epochs.setToolTip("Epochs that train the head on the frozen trunk first")
        self.finetune_lr = QDoubleSpinBox()
        self.finetune_lr.setDecimals(6)
        self.finetune_lr.setRange(0.0, 1.0)
        self.finetune_lr.setSingleStep(1e-5)
        self.finetune_lr.setSpecialValueText("same as lr")
        self.finetune_lr.setToolTip("Learning rate once the trunk is unfrozen")
        self.finetune_tile = QSpinBox()
        self.finetune_tile.setRange(0, 16384)
        self.finetune_tile.setSingleStep(256)
        self.finetune_tile.setSpecialValueText("same tile")
        # Training the trunk keeps one tile's graph: a smaller tile than the frozen epochs' (which
        # only run forward) may be what fits the device.
        self.finetune_tile.setToolTip("Tile (input pixels) once the trunk is unfrozen: smaller needs less memory")
        self.spec_problem = QLabel()
        self.spec_problem.setWordWrap(True)
        self.spec_problem.setStyleSheet("color: #b00020")

        self.model = ModelCombo()
        self.model.setEditable(True)
        self.base = QComboBox()
        self.base.addItems(BASE_TEXTS)
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("state dict (.pth, .pt, .safetensors) with torchvision/timm names")
        self.weights_button = QPushButton("…")
        self.weights_button.setFixedWidth(28)

        self.input_by = QComboBox()
        self.input_by.addItems(INPUT_UNITS)
        self.input_value = QDoubleSpinBox()
        self.input_value.setRange(0.0, 64.0)
        self.input_value.setDecimals(3)
        self.input_size = QSpinBox()
        self.input_size.setRange(0, 65536)
        self.input_size.setSingleStep(512)
        self.input_size.setSpecialValueText("own size")
        self.input_size.setToolTip("Square input edge in level pixels (tissue cropped or padded to it)")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(16, 16384)
        self.tile_size.setSingleStep(256)

        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.graph_budget = QLineEdit()
        self.graph_budget.setPlaceholderText("none (e.g. 2G, 512M, auto)")
        self.graph_budget.setToolTip("Memory a training step may keep of its tiles' forward graphs, so backward "
                                     "recomputes only the rest (exact either way). auto: half the free memory")
        self.plan_button = QPushButton("Plan")
        self.plan_button.setToolTip("Compute the tiles, the blocks kept and the estimated peak memory for this form")
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)

        self.run_dir = QLineEdit()
        self.run_dir.setToolTip("The run's folder: last/, best/, metrics.jsonl and spec.json go here")
        self.run_dir_button = QPushButton("…")
        self.run_dir_button.setFixedWidth(28)

        self.update_saliency = QCheckBox("Update saliency each epoch")
        self.update_saliency.setToolTip("After each epoch, run the new checkpoint with saliency on the view on screen")
        self.saliency_now = QPushButton("Saliency now")
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop; the last checkpoint is saved at the next step")
        note = QLabel(PAUSE_NOTE)
        note.setWordWrap(True)
        note.setStyleSheet("color: #555")

        grid = QGridLayout(self)
        grid.setContentsMargins(6, 6, 6, 6)
        grid.setVerticalSpacing(4)
        grid.addWidget(QLabel("Labels"), 0, 0)
        grid.addWidget(self.labels_source, 0, 1, 1, 3)
        grid.addWidget(self.import_button, 0, 4)
        grid.addWidget(self.save_labels_button, 0, 5)
        grid.addWidget(self.labels_summary, 1, 1, 1, 5)
        grid.addWidget(QLabel("Task"), 2, 0)
        grid.addWidget(self.task, 2, 1, 1, 2)
        grid.addWidget(self.targets_hint, 2, 3, 1, 3)
        grid.addWidget(QLabel("Targets"), 3, 0)
        grid.addWidget(self.targets, 3, 1, 1, 5)
        grid.addWidget(QLabel("Model"), 4, 0)
        grid.addWidget(self.model, 4, 1, 1, 2)
        grid.addWidget(self.base, 4, 3, 1, 3)
        grid.addWidget(QLabel("Weights"), 5, 0)
        grid.addWidget(self.weights, 5, 1, 1, 4)
        grid.addWidget(self.weights_button, 5, 5)
        grid.addWidget(QLabel("Head"), 6, 0)
        head_row = _inline_row(self.head, self.tissue_mask)
        head_row.setStretch(0, 1)
        grid.addLayout(head_row, 6, 1, 1, 5)
        grid.addWidget(QLabel("Input"), 7, 0)
        input_row = _inline_row(self.input_value, self.input_by, QLabel("size"), self.input_size, QLabel("tile"),
                                self.tile_size)
        grid.addLayout(input_row, 7, 1, 1, 5)
        grid.addWidget(QLabel("Train"), 8, 0)
        train_row = _inline_row(QLabel("epochs"), self.epochs, QLabel("lr"), self.lr, QLabel("device"), self.device)
        grid.addLayout(train_row, 8, 1, 1, 5)
        grid.addWidget(QLabel("Frozen trunk"), 9, 0)
        frozen_row = _inline_row(self.freeze_trunk_epochs, QLabel("epochs train the head only, then:"))
        frozen_row.addStretch(1)
        grid.addLayout(frozen_row, 9, 1, 1, 5)
        # The trunk's own lr and tile sit on a row of their own, under the frozen epochs they
        # follow: on one row with them the labels ran into the fields.
        unfrozen_row = _inline_row(QLabel("trunk lr"), self.finetune_lr, QLabel("tile"), self.finetune_tile)
        unfrozen_row.addStretch(1)
        grid.addLayout(unfrozen_row, 10, 1, 1, 5)
        grid.addWidget(QLabel("Graph budget"), 11, 0)
        grid.addWidget(self.graph_budget, 11, 1, 1, 3)
        grid.addWidget(self.plan_button, 11, 4, 1, 2)
        grid.addWidget(self.plan_label, 12, 1, 1, 5)
        grid.addWidget(QLabel("Run folder"), 13, 0)
        grid.addWidget(self.run_dir, 13, 1, 1, 4)
        grid.addWidget(self.run_dir_button, 13, 5)
        grid.addWidget(self.update_saliency, 14, 1, 1, 3)
        grid.addWidget(self.saliency_now, 14, 4, 1, 2)
        grid.addWidget(self.spec_problem, 15, 0, 1, 6)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.resume_button, self.cancel_button):
            buttons.addWidget(b)
        grid.addLayout(buttons, 16, 0, 1, 6)
        grid.addWidget(note, 17, 0, 1, 6)
        grid.setRowStretch(18, 1)
        grid.setColumnStretch(2, 1)

        self.import_button.clicked.connect(self._choose_csv)
        self.save_labels_button.clicked.connect(self._choose_save_csv)
        self.weights_button.clicked.connect(self._choose_weights)
        self.run_dir_button.clicked.connect(self._choose_run_dir)
        self._filling = False  # the widgets are being set from the form: not the user's edits
        edits = [(self.labels_source.currentIndexChanged, lambda i: {"labels_source": LABEL_SOURCES[i]}),
                 (self.model.currentTextChanged, lambda text: {"model": text}),
                 (self.base.currentIndexChanged, lambda i: {"base": BASES[i]}),
                 (self.weights.textChanged, lambda text: {"weights": text}),
                 (self.input_by.currentTextChanged, lambda text: {"input_by": text}),
                 (self.input_value.valueChanged, lambda v: {"input_value": v}),
                 (self.input_size.valueChanged, lambda v: {"input_size": v}),
                 (self.tile_size.valueChanged, lambda v: {"tile_size": v}),
                 (self.epochs.valueChanged, lambda v: {"epochs": v}),
                 (self.lr.valueChanged, lambda v: {"lr": v}),
                 (self.device.currentTextChanged, lambda text: {"device": text}),
                 (self.run_dir.textChanged, lambda text: {"run_dir": text}),
                 (self.update_saliency.toggled, lambda on: {"update_saliency": on}),
                 (self.graph_budget.textChanged, lambda text: {"graph_budget": text}),
                 (self.task.currentTextChanged, lambda text: {"task": text}),
                 (self.head.currentTextChanged, lambda text: {"head": text}),
                 (self.tissue_mask.toggled, lambda on: {"tissue_mask": on}),
                 (self.freeze_trunk_epochs.valueChanged, lambda v: {"freeze_trunk_epochs": v}),
                 (self.finetune_lr.valueChanged, lambda v: {"finetune_lr": v}),
                 (self.finetune_tile.valueChanged, lambda v: {"finetune_tile": v})]
        for signal, fields in edits:
            signal.connect(lambda value, fields=fields: self._edit(fields(value)))
        self.targets.itemChanged.connect(self._on_target_ticked)
        form.changed.connect(self._show)
        for name in ("architectures", *TrainingForm.FIELDS):  # the list first, then the choice in it
            self._show(name)

    # -- binding --------------------------------------------------------------------------------
    def _edit(self, changes: dict) -> None:
        if not self._filling:
            self.form.set(**changes)

    def _show(self, name: str) -> None:
        """Show the form's field ``name`` in its widget."""
        form = self.form
        filling, self._filling = self._filling, True
        try:
            value = getattr(form, name)
            if name == "labels_source":
                self.labels_source.setCurrentIndex(LABEL_SOURCES.index(value))
            elif name == "labels_summary":
                self.labels_summary.setText(value)
            elif name == "architectures":
                self.model.clear()
                self.model.addItems(list(value))
                self.model.setCurrentText(form.model)
            elif name == "base":
                self.base.setCurrentIndex(BASES.index(value))
            elif name == "state":
                self._show_state(value)
            elif name in ("columns", "targets"):
                self._show_targets()
            elif name == "spec_problem":
                self.spec_problem.setText(value)
                self.spec_problem.setVisible(bool(value))
                self.start_button.setEnabled(not form.busy and not value)
            elif name == "tissue_mask":
                self.tissue_mask.setChecked(value)
            elif name in ("model", "input_by", "device", "task", "head"):
                getattr(self, name).setCurrentText(value)
            elif name == "plan_text":
                self.plan_label.setText(value)
            elif name in ("weights", "run_dir", "graph_budget"):
                if getattr(self, name).text() != value:
                    getattr(self, name).setText(value)
            elif name == "update_saliency":
                self.update_saliency.setChecked(value)
            elif name in ("input_value", "input_size", "tile_size", "epochs", "lr", "freeze_trunk_epochs", "finetune_lr",
                          "finetune_tile"):
                getattr(self, name).setValue(value)
            if name in ("base", "state"):
                self._update_weights_row()
            if name in ("freeze_trunk_epochs", "state"):
                self._update_staged_row()
        finally:
            self._filling = filling

    def _show_targets(self) -> None:
        """One tick box per imported column, ticked when it is a target."""
        form = self.form
        self.targets.blockSignals(True)
        try:
            self.targets.clear()
            for column in form.columns:
                item = QListWidgetItem(column)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if column in form.targets else Qt.CheckState.Unchecked)
                self.targets.addItem(item)
        finally:
            self.targets.blockSignals(False)
        self.targets_hint.setVisible(not form.columns)

    def _on_target_ticked(self, _item: QListWidgetItem) -> None:
        ticked = tuple(self.targets.item(i).text() for i in range(self.targets.count())
                       if self.targets.item(i).checkState() == Qt.CheckState.Checked)
        self._edit({"targets": ticked})

    def _update_weights_row(self) -> None:
        wants_file = self.form.base == "imagenet" and not self.form.busy
        self.weights.setEnabled(wants_file)
        self.weights_button.setEnabled(wants_file)
        # Fine-tuning the loaded model keeps its head (and the weights of it): the choice is its.
        from_loaded = self.form.base == "loaded"
        self.head.setEnabled(not from_loaded and not self.form.busy)
        self.head.setToolTip("Fine-tuning the loaded model keeps its head" if from_loaded else HEAD_TOOLTIP)

    def _update_staged_row(self) -> None:
        # The trunk's learning rate and tile apply after the frozen epochs: with none they mean
        # nothing (and the form leaves them out of the spec).
        staged = self.form.freeze_trunk_epochs > 0 and not self.form.busy
        for w in (self.finetune_lr, self.finetune_tile):
            w.setEnabled(staged)

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import labels", "", "Labels (*.csv);;All files (*)")
        if path:
            self.import_csv_requested.emit(path)

    def _choose_save_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", "labels.csv", "Labels (*.csv)")
        if path:
            self.save_csv_requested.emit(path)

    def _choose_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "ImageNet weights", "",
                                              "State dicts (*.pth *.pt *.bin *.safetensors);;All files (*)")
        if path:
            self.weights.setText(path)

    def _choose_run_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder")
        if folder:
            self.run_dir.setText(folder)

    # -- state ----------------------------------------------------------------------------------
    def _show_state(self, state: str) -> None:
        busy = self.form.busy
        resumable = state in RESUMABLE_STATES
        self.start_button.setEnabled(not busy and not self.form.spec_problem)
        self.pause_button.setEnabled(state == "running")
        self.cancel_button.setEnabled(state == "running")
        self.resume_button.setEnabled(resumable)
        for w in (self.labels_source, self.import_button, self.model, self.base, self.input_by, self.input_value,
                  self.input_size, self.tile_size, self.epochs, self.lr, self.device, self.run_dir,
                  self.graph_budget, self.plan_button, self.task, self.targets, self.head, self.tissue_mask,
                  self.freeze_trunk_epochs):
            w.setEnabled(not busy)
