"""Label slides for training in the slide browser: a "Label" column and a context menu per slide
(one entry per known class, "New label…", "Clear label"), writing a
:class:`~viewer.model.labels.LabelTable`. The column follows the table, whoever changes it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QPoint, Qt, Signal
from PySide6.QtWidgets import QInputDialog, QMenu

from viewer.model.labels import LabelTable
from viewer.widgets.slide_browser import SlideBrowser

LABEL_COLUMN = 3


class BrowserLabeller(QObject):
    #: The user labelled slides through the menu.
    labels_changed = Signal()

    def __init__(self, browser: SlideBrowser, table: LabelTable, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.browser, self.table = browser, table
        tree = browser.tree
        tree.setHeaderLabels(["Slide", "Size", "MPP", "Label"])
        tree.header().moveSection(LABEL_COLUMN, 1)  # beside the name: the browser dock is narrow
        tree.setSelectionMode(tree.SelectionMode.ExtendedSelection)  # label several slides at once
        tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        tree.customContextMenuRequested.connect(self._menu)
        browser.folder_changed.connect(self.refresh)
        table.changed.connect(self.refresh)

    def set_label(self, paths: list[str], label: str | None) -> None:
        self.table.set_labels(paths, label)
        self.labels_changed.emit()

    def refresh(self, _folder: str | None = None) -> None:
        for path in self.browser.listed_paths():
            item = self.browser.item_for(path)
            if item is not None:
                item.setText(LABEL_COLUMN, self.table.get(path) or "")

    def _menu(self, pos: QPoint) -> None:
        tree = self.browser.tree
        paths = [item.data(0, Qt.ItemDataRole.UserRole) for item in tree.selectedItems()]
        clicked = tree.itemAt(pos)
        if clicked is not None and clicked.data(0, Qt.ItemDataRole.UserRole) not in paths:
            paths = [clicked.data(0, Qt.ItemDataRole.UserRole)]
        if not paths:
            return
        menu = QMenu(tree)
        menu.addSection(f"Training label for {Path(paths[0]).name}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else ""))
        for label in self.table.classes:
            menu.addAction(label).setData(label)
        new = menu.addAction("New label…")
        clear = menu.addAction("Clear label")
        chosen = menu.exec(tree.viewport().mapToGlobal(pos))
        if chosen is None:
            return
        if chosen is clear:
            self.set_label(paths, None)
        elif chosen is new:
            text, ok = QInputDialog.getText(tree, "New label", "Label (class name):")
            if ok and text.strip():
                self.set_label(paths, text.strip())
        else:
            self.set_label(paths, chosen.data())
