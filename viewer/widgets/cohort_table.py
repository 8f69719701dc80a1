"""The thin Qt adapter of :class:`viewer.model.cohort.CohortTable`: text, tool tips, alignment
and sorting (the header's clicks sort the model's rows; the model notifies a reset)."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, Qt

from viewer.model.cohort import COLUMNS, CohortTable


class CohortTableModel(QAbstractTableModel):
    def __init__(self, table: CohortTable, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.table = table
        table.reset.connect(self._reset)

    def _reset(self) -> None:
        self.beginResetModel()
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.table)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.table.text(index.row(), index.column())
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.table.tooltip(index.row())
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() == 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.table.sort(column, descending=order == Qt.SortOrder.DescendingOrder)
