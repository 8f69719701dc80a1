"""The class list: the shown slide's annotation classes with their colours; the current one is
the class new annotations get. Add, rename and recolour (undoable, through the document), give
the selected annotations the current class, and tick a class to exclude its areas from every
model run (the document's ``excluded_classes``)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QColorDialog,
    QGridLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.annotations import AnnotationError
from engine.annotations.model import RGB
from viewer.model.annotations import AnnotationDocument

NO_CLASS = "(no class)"
#: Shown after a class marked exclude.
EXCLUDED_SUFFIX = " — excluded from runs"


def swatch(rgb: RGB) -> QIcon:
    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor(*rgb))
    return QIcon(pixmap)


class AnnotationClassList(QWidget):
    #: An edit was refused (a name taken, an empty name): the message says why.
    edit_failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: AnnotationDocument | None = None
        self._chosen: str | None = None
        self.list = QListWidget()
        self.list.setToolTip("Tick a class to exclude its areas from every model run (pen marks, glass, artefacts)")
        self.add_button, self.rename_button = QPushButton("Add…"), QPushButton("Rename…")
        self.color_button, self.assign_button = QPushButton("Colour…"), QPushButton("Set selected")
        self.assign_button.setToolTip("Give the selected annotations this class")
        buttons = QGridLayout()  # two by two: the dock stays as narrow as the others beside the view
        for i, b in enumerate((self.add_button, self.rename_button, self.color_button, self.assign_button)):
            buttons.addWidget(b, i // 2, i % 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self.list.currentItemChanged.connect(self._on_current)
        self.list.itemChanged.connect(self._on_item_changed)
        self.add_button.clicked.connect(self._ask_add)
        self.rename_button.clicked.connect(self._ask_rename)
        self.color_button.clicked.connect(self._ask_color)
        self.assign_button.clicked.connect(self.assign_to_selection)
        self.set_document(None)

    def set_document(self, document: AnnotationDocument | None) -> None:
        if self.document is not None:
            self.document.classes_changed.disconnect(self.refresh)
        self.document = document
        if document is not None:
            document.classes_changed.connect(self.refresh)
        self.refresh()

    def current_class(self) -> str | None:
        """The class new annotations get (None: unclassified)."""
        return self._chosen

    def refresh(self) -> None:
        doc = self.document
        names = list(doc.classes) if doc is not None else []
        if self._chosen not in names:
            self._chosen = None
        self.list.blockSignals(True)
        self.list.clear()
        none = QListWidgetItem(NO_CLASS)
        none.setData(Qt.ItemDataRole.UserRole, None)
        self.list.addItem(none)
        for name in names:
            excluded = name in doc.excluded_classes
            item = QListWidgetItem(swatch(doc.class_color(name)), f"{name}{EXCLUDED_SUFFIX if excluded else ''}")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if excluded else Qt.CheckState.Unchecked)
            item.setToolTip(f"{name}: {'excluded from' if excluded else 'included in'} model runs (tick to change)")
            self.list.addItem(item)
            if name == self._chosen:
                self.list.setCurrentItem(item)
        if self._chosen is None:
            self.list.setCurrentItem(none)
        self.list.blockSignals(False)
        for b in (self.add_button, self.assign_button):
            b.setEnabled(doc is not None)
        for b in (self.rename_button, self.color_button):
            b.setEnabled(doc is not None and self._chosen is not None)

    def _on_current(self, item: QListWidgetItem | None, _previous) -> None:
        self._chosen = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        self.refresh()

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        name = item.data(Qt.ItemDataRole.UserRole)
        if self.document is not None and name is not None:
            self.set_excluded(name, item.checkState() == Qt.CheckState.Checked)

    def set_excluded(self, name: str, excluded: bool) -> None:
        """Mark class ``name`` exclude (its areas are taken out of every run) or not."""
        self.document.set_excluded(name, excluded)

    def excluded_classes(self) -> tuple[str, ...]:
        return tuple(sorted(self.document.excluded_classes)) if self.document is not None else ()

    def choose(self, name: str | None) -> None:
        self._chosen = name
        self.refresh()

    # -- edits (the dialogs call these; tests call them directly) ---------------------------------
    def add_class(self, name: str, rgb: RGB | None = None) -> None:
        self.document.add_class(name, rgb)
        self.choose(name)

    def rename_current(self, new: str) -> None:
        old = self._chosen
        self.document.rename_class(old, new)
        self.choose(new)

    def recolor_current(self, rgb: RGB) -> None:
        self.document.recolor_class(self._chosen, rgb)

    def assign_to_selection(self) -> None:
        if self.document is not None:
            self.document.set_class(self.document.selection, self._chosen)

    def _ask_add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add a class", "Class name:")
        if ok and name.strip():
            self._try(self.add_class, name.strip())

    def _ask_rename(self) -> None:
        name, ok = QInputDialog.getText(self, "Rename the class", "New name:", text=self._chosen or "")
        if ok and name.strip():
            self._try(self.rename_current, name.strip())

    def _ask_color(self) -> None:
        colour = QColorDialog.getColor(QColor(*self.document.class_color(self._chosen)), self, "Class colour")
        if colour.isValid():
            self.recolor_current((colour.red(), colour.green(), colour.blue()))

    def _try(self, edit, *args) -> None:
        try:
            edit(*args)
        except AnnotationError as exc:
            self.edit_failed.emit(str(exc))
