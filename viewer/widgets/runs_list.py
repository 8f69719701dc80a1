"""Training runs in a runs folder with their final metrics; Reopen shows one's curves and loads
its model. The list only displays :class:`viewer.model.runs.RunSummary` rows scanned on a worker."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from viewer.model.runs import RunSummary, format_metric

COLUMNS = ("Run", "Model", "Epochs", "Val AUC", "Val acc", "Loss")


class RunsList(QWidget):
    reopen_requested = Signal(object)  # RunSummary
    refresh_requested = Signal()
    folder_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder_label = QLabel("Runs")
        self.folder_label.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setColumnWidth(0, 150)
        for col in range(1, len(COLUMNS)):
            self.tree.setColumnWidth(col, 64)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("Choose the runs folder: new runs go there and its runs are listed")
        self.refresh_button = QPushButton("Refresh")
        self.reopen_button = QPushButton("Reopen")
        self.reopen_button.setToolTip("Show the run's curves and load its best (else last) model into the Model panel")
        buttons = QHBoxLayout()
        buttons.addWidget(self.folder_button)
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.reopen_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 6, 6)
        layout.addWidget(self.folder_label)
        layout.addWidget(self.tree, 1)
        layout.addLayout(buttons)
        self.runs: list[RunSummary] = []
        self.folder = ""
        self.folder_button.clicked.connect(self._choose_folder)
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.reopen_button.clicked.connect(self._reopen_current)
        self.tree.itemDoubleClicked.connect(self._reopen_item)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.folder)
        if folder:
            self.folder_chosen.emit(folder)

    def set_runs(self, folder: str, runs: list[RunSummary]) -> None:
        self.folder = folder
        self.folder_label.setText(f"Runs in {folder}" if runs else f"No runs yet in {folder}")
        self.runs = runs
        self.tree.clear()
        for index, run in enumerate(runs):
            item = QTreeWidgetItem(self.tree, [
                run.name, run.model, f"{run.epochs_done}/{run.epochs}", format_metric(run.val.get("auc")),
                format_metric(run.val.get("accuracy")), format_metric(run.last_loss)])
            item.setData(0, Qt.ItemDataRole.UserRole, index)
            item.setToolTip(0, run.path)

    def _reopen_item(self, item: QTreeWidgetItem) -> None:
        self.reopen_requested.emit(self.runs[item.data(0, Qt.ItemDataRole.UserRole)])

    def _reopen_current(self) -> None:
        item = self.tree.currentItem()
        if item is not None:
            self._reopen_item(item)
