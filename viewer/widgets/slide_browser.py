"""A folder's slides with thumbnails, size and MPP; picking one opens or shows it.

Each file is probed (opened, measured, thumbnailed, closed) on a background worker; a file
that cannot be read stays in the list with the reason, so one bad file never hides others.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QLabel, QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from viewer.workers.background import BackgroundRunner
from viewer.workers.slide_jobs import THUMB_PX, SlideInfo, list_slide_files, probe_slide


class SlideBrowser(QWidget):
    slide_chosen = Signal(str)
    #: The list was refilled for a folder (the training labels re-mark its slides).
    folder_changed = Signal(str)

    def __init__(self, runner: BackgroundRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.folder: Path | None = None
        self.folder_label = QLabel("No folder")
        self.folder_label.setWordWrap(True)
        self.choose_button = QPushButton("Choose folder…")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Slide", "Size", "MPP"])
        self.tree.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.tree.setRootIsDecorated(False)
        self.tree.setColumnWidth(0, 150)
        self.tree.setColumnWidth(1, 80)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.folder_label)
        layout.addWidget(self.choose_button)
        layout.addWidget(self.tree, 1)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._jobs: list[int] = []
        self.tree.itemActivated.connect(self._activated)
        self.tree.itemClicked.connect(self._activated)

    def set_folder(self, folder: str | Path) -> None:
        folder = Path(folder)
        for job in self._jobs:
            self.runner.cancel(job)
        self._jobs.clear()
        self.folder = folder
        self.folder_label.setText(str(folder))
        self.tree.clear()
        self._items.clear()
        try:
            files = list_slide_files(folder)
        except OSError as exc:
            self.folder_label.setText(f"{folder}: cannot list the folder ({exc.strerror})")
            return
        for path in files:
            item = QTreeWidgetItem(self.tree, [path.name, "…", ""])
            item.setData(0, Qt.ItemDataRole.UserRole, str(path))
            item.setToolTip(0, str(path))
            self._items[str(path)] = item
            self._jobs.append(self.runner.submit(probe_slide, str(path), on_done=self._on_probed))
        self.folder_changed.emit(str(folder))

    def _on_probed(self, info: SlideInfo) -> None:
        item = self._items.get(info.path)
        if item is None:
            return
        if info.error:
            item.setText(1, "unreadable")
            item.setToolTip(0, info.error)
            item.setToolTip(1, info.error)
            item.setForeground(1, Qt.GlobalColor.red)
            return
        w, h = info.dimensions
        item.setText(1, f"{w}x{h}")
        item.setText(2, f"{info.mpp[0]:.3g}" if info.mpp else "n/a")
        if info.thumbnail is not None:
            item.setIcon(0, QPixmap.fromImage(info.thumbnail))

    def set_current(self, path: str) -> None:
        item = self._items.get(str(Path(path)))
        if item is not None:
            self.tree.setCurrentItem(item)

    def item_for(self, path: str) -> QTreeWidgetItem | None:
        return self._items.get(str(Path(path)))

    def listed_paths(self) -> list[str]:
        return list(self._items)

    def _activated(self, item: QTreeWidgetItem) -> None:
        self.slide_chosen.emit(item.data(0, Qt.ItemDataRole.UserRole))
