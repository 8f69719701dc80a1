"""The Cohort panel: where the labelled slides come from, Evaluate and Cancel with the job's
progress and ETA, the headline metrics, the sortable table of slides (double-click opens one
with its kept maps) and the ROC curves or predicted-against-true points (pyqtgraph).

Bound to a :class:`viewer.model.cohort.CohortForm` and :class:`~viewer.model.cohort.CohortTable`;
:meth:`CohortPanel.bind` ties the buttons to a :class:`viewer.controllers.cohort.CohortEvaluation`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QWidget,
)

from viewer.model.cohort import COHORT_SOURCES, CohortForm, CohortTable
from viewer.widgets.cohort_table import CohortTableModel

SOURCE_TEXTS = ("Labelled slides of the browser", "CSV file")
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))


class CohortPlot(pg.PlotWidget):
    """ROC curves (one per class; binary: the positive class) or predicted against true."""

    def __init__(self) -> None:
        super().__init__(background="w")
        # Bottom right: where a ROC curve (top left) and the diagonal leave room.
        self.legend = self.addLegend(offset=(-10, -10), labelTextColor="k", labelTextSize="9pt")
        self.legend.setBrush(pg.mkBrush(255, 255, 255, 200))
        for axis in ("left", "bottom"):
            self.getAxis(axis).setTextPen("k")
            self.getAxis(axis).setPen("k")
        self.setMinimumSize(260, 220)
        self.items: list = []
        self.show_files(None)

    def show_files(self, files) -> None:
        self.clear()
        self.legend.clear()
        self.items = []
        if files is None or not files.curves:
            self.setTitle("Run an evaluation to see its curves", color="#555")
            return
        diagonal = pg.mkPen((150, 150, 150), width=1, style=Qt.PenStyle.DashLine)
        if files.kind == "roc":
            self.setTitle("ROC", color="k")
            self.setLabel("bottom", "false positive rate", color="k")
            self.setLabel("left", "true positive rate", color="k")
            self.plot([0, 1], [0, 1], pen=diagonal)
            for k, curve in enumerate(files.curves):
                self.items.append(self.plot(curve.x, curve.y, pen=pg.mkPen(COLOURS[k % len(COLOURS)], width=2),
                                            name=curve.label))
            self.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)
        else:
            self.setTitle("Predicted against true", color="k")
            names = [c.label.split(" (")[0] for c in files.curves]
            self.setLabel("bottom", f"true {', '.join(names)}", color="k")
            self.setLabel("left", "predicted", color="k")
            values = np.concatenate([np.concatenate([c.x, c.y]) for c in files.curves])
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            self.plot([lo, hi], [lo, hi], pen=diagonal)
            for k, curve in enumerate(files.curves):
                colour = COLOURS[k % len(COLOURS)]
                self.items.append(self.plot(curve.x, curve.y, pen=None, symbol="o", symbolSize=7,
                                            symbolBrush=(*colour, 180), symbolPen=None, name=curve.label))
            self.enableAutoRange()


class CohortPanel(QWidget):
    csv_chosen = Signal(str)
    browser_chosen = Signal()

    def __init__(self, form: CohortForm, table: CohortTable, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.form = form
        self.source = QComboBox()
        self.source.addItems(SOURCE_TEXTS)
        self.source.setToolTip("Right-click slides in the slide browser to label them, or import a CSV "
                               "(slide, label or target columns[, patient])")
        self.import_button = QPushButton("Import CSV…")
        self.csv_label = QLabel()
        self.csv_label.setStyleSheet("color: #555")
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Run the Model panel's model on every labelled slide (one queued job); "
                                        "each slide's maps are kept for double-click")
        self.cancel_button = QPushButton("Cancel")
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(12)
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("font-weight: bold")
        self.failed = QLabel()
        self.failed.setWordWrap(True)
        self.failed.setStyleSheet("color: #b00020")
        self.model = CohortTableModel(table, self)
        self.table_view = QTableView()
        self.table_view.setModel(self.model)
        self.table_view.setSortingEnabled(True)
        self.table_view.sortByColumn(table.sort_column, Qt.SortOrder.DescendingOrder)
        self.table_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_view.verticalHeader().setVisible(False)
        self.table_view.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table_view.setToolTip("Double-click a slide to open it with its maps")
        self.plot = CohortPlot()

        top = QGridLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(QLabel("Slides"), 0, 0)
        top.addWidget(self.source, 0, 1)
        top.addWidget(self.import_button, 0, 2)
        top.addWidget(self.csv_label, 1, 1, 1, 2)
        buttons = QHBoxLayout()
        for w in (self.evaluate_button, self.cancel_button):
            buttons.addWidget(w)
        buttons.addWidget(self.progress_bar, 1)
        top.addLayout(buttons, 2, 0, 1, 3)
        top.addWidget(self.progress_label, 3, 0, 1, 3)
        top.addWidget(self.summary, 4, 0, 1, 3)
        top.addWidget(self.failed, 5, 0, 1, 3)
        top.setColumnStretch(1, 1)
        left = QWidget()
        column = QGridLayout(left)
        column.setContentsMargins(6, 6, 6, 6)
        column.addLayout(top, 0, 0)
        column.addWidget(self.table_view, 1, 0)
        column.setRowStretch(1, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.plot)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self.import_button.clicked.connect(self._choose_csv)
        self.source.currentIndexChanged.connect(self._on_source)
        form.changed.connect(self._show)
        for name in CohortForm.FIELDS:
            self._show(name)

    def bind(self, cohort) -> None:
        """Buttons ask ``cohort`` (a :class:`viewer.controllers.cohort.CohortEvaluation`)."""
        self.evaluate_button.clicked.connect(cohort.evaluate)
        self.cancel_button.clicked.connect(cohort.cancel)
        self.csv_chosen.connect(cohort.use_csv)
        self.browser_chosen.connect(cohort.use_browser)
        self.table_view.doubleClicked.connect(lambda index: cohort.open_row(index.row()))
        cohort.progress.connect(self._on_progress)
        cohort.results_shown.connect(self.plot.show_files)

    def _on_source(self, i: int) -> None:
        if COHORT_SOURCES[i] == "browser":
            self.browser_chosen.emit()
        elif self.form.csv_path:
            self.csv_chosen.emit(self.form.csv_path)
        else:
            self._choose_csv()

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cohort labels", "", "Labels (*.csv);;All files (*)")
        if path:
            self.csv_chosen.emit(path)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _show(self, name: str) -> None:
        form = self.form
        if name == "source":
            self.source.blockSignals(True)
            self.source.setCurrentIndex(COHORT_SOURCES.index(form.source))
            self.source.blockSignals(False)
        elif name == "csv_path":
            self.csv_label.setText(form.csv_path or "")
        elif name == "state":
            busy = form.busy
            self.evaluate_button.setEnabled(not busy)
            self.cancel_button.setEnabled(form.state == "running")
            for w in (self.source, self.import_button):
                w.setEnabled(not busy)
            if form.state == "running" and self.progress_bar.maximum() == self.progress_bar.value():
                self.progress_bar.setRange(0, 0)  # busy until the first slide reports
        elif name == "progress_text":
            self.progress_label.setText(form.progress_text)
        elif name == "summary":
            self.summary.setText(form.summary)
        elif name == "failed_text":
            self.failed.setText(form.failed_text)
            self.failed.setVisible(bool(form.failed_text))
