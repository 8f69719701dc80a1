"""The slide's associated images (label, macro, thumbnail): pick one, see it.

The panel only shows images; reading them is the main window's job on a worker, asked for
through ``image_requested``."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap, QResizeEvent
from PySide6.QtWidgets import QComboBox, QLabel, QSizePolicy, QVBoxLayout, QWidget


class AssociatedImagesPanel(QWidget):
    image_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.choice = QComboBox()
        self.picture = QLabel("No associated images", alignment=Qt.AlignmentFlag.AlignCenter)
        self.picture.setMinimumSize(120, 90)
        self.picture.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self._pixmap: QPixmap | None = None
        self.shown_name: str | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.choice)
        layout.addWidget(self.picture, 1)
        self.choice.currentTextChanged.connect(self._choose)

    def set_names(self, names: tuple[str, ...]) -> None:
        self._pixmap, self.shown_name = None, None
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItems(list(names))
        self.choice.blockSignals(False)
        self.picture.setText("Loading…" if names else "No associated images")
        self.picture.setPixmap(QPixmap())
        if names:
            preferred = "label" if "label" in names else names[0]
            self.choice.setCurrentText(preferred)
            self._choose(preferred)

    def _choose(self, name: str) -> None:
        if name:
            self.image_requested.emit(name)

    def show_image(self, name: str, image: QImage) -> None:
        if name != self.choice.currentText():
            return  # the user picked another one meanwhile
        self._pixmap = QPixmap.fromImage(image)
        self.shown_name = name
        self._rescale()

    def show_error(self, message: str) -> None:
        self._pixmap, self.shown_name = None, None
        self.picture.setPixmap(QPixmap())
        self.picture.setText(message)
        self.picture.setWordWrap(True)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is not None:
            self.picture.setPixmap(self._pixmap.scaled(self.picture.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
