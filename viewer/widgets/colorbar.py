"""The active layer's colorbar in the overlay panel (the legend painter of ``viewer.render.legend``)."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from viewer.model.layers import LayerStyle
from viewer.render.legend import LEGEND_H, LEGEND_W, paint_colorbar


class ColorbarWidget(QWidget):
    """The active layer's colorbar in the overlay panel."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._title = ""
        self._style: LayerStyle | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(LEGEND_W, LEGEND_H)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, LEGEND_H)

    def set_style(self, title: str, style: LayerStyle | None) -> None:
        self._title, self._style = title, style
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        if self._style is None:
            return
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(255, 255, 255))
            paint_colorbar(painter, QRectF(self.rect()), self._title, self._style)
        finally:
            painter.end()
