"""The annotation list: each annotation's name, class and area (µm² when the slide has an MPP,
else level-0 px²); selecting rows selects the annotations, and a single selection asks the view
to centre on it."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from viewer.model.annotations import AnnotationDocument
from viewer.widgets.annotation_classes import swatch

#: Rows past this are left out (a detection file can hold 100,000s); the painter still shows all.
MAX_ROWS = 5000


class AnnotationList(QWidget):
    #: (l0_x, l0_y) to centre the view on.
    center_requested = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: AnnotationDocument | None = None
        self.mpp: tuple[float, float] | None = None
        self._filling = False
        self.table = QTableWidget(0, 3)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumWidth(120)  # never wider than the other right-hand docks
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.table)
        self.table.itemSelectionChanged.connect(self._on_rows)
        self.set_document(None)

    def set_document(self, document: AnnotationDocument | None, mpp: tuple[float, float] | None = None) -> None:
        if self.document is not None:
            self.document.changed.disconnect(self._on_changed)
            self.document.selection_changed.disconnect(self._sync_selection)
        self.document, self.mpp = document, mpp
        if document is not None:
            document.changed.connect(self._on_changed)
            document.selection_changed.connect(self._sync_selection)
        self.refresh()

    def _on_changed(self, _l0_box) -> None:
        self.refresh()

    def refresh(self) -> None:
        doc = self.document
        self._filling = True
        self.table.setHorizontalHeaderLabels(["Name", "Class", "Area (µm²)" if self.mpp else "Area (px²)"])
        rows = min(len(doc), MAX_ROWS) if doc is not None else 0
        self.table.setRowCount(rows)
        for row in range(rows):
            a = doc[row]
            area = (a.area_um2(self.mpp) if self.mpp else a.area_l0) if a.has_area else None
            cls = QTableWidgetItem(swatch(doc.color_of(a)), a.class_name or "")
            values = (QTableWidgetItem(a.name or f"{a.kind} {row + 1}"), cls,
                      QTableWidgetItem("" if area is None else f"{area:,.0f}"))
            values[2].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            for col, item in enumerate(values):
                self.table.setItem(row, col, item)
        self._filling = False
        self._sync_selection()

    def _sync_selection(self) -> None:
        doc = self.document
        filling, self._filling = self._filling, True
        self.table.clearSelection()
        for row in doc.selection if doc is not None else ():
            if row < self.table.rowCount():
                for col in range(self.table.columnCount()):
                    self.table.item(row, col).setSelected(True)
        self._filling = filling

    def _on_rows(self) -> None:
        if self._filling or self.document is None:
            return
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        self.document.select(rows)
        if len(rows) == 1:
            x, y = self.document[rows[0]].l0_box.center
            self.center_requested.emit(x, y)
