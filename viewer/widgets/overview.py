"""The overview (minimap): the whole slide small, the viewport as a rectangle; click or drag
to move the view there."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from engine.geometry import Box
from viewer.model.viewport import ViewTransform


class OverviewWidget(QWidget):
    #: Level-0 point the user clicked or dragged to.
    center_requested = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._l0_size: tuple[int, int] | None = None
        self._l0_view: Box | None = None
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def sizeHint(self) -> QSize:
        return QSize(260, 200)

    def set_slide(self, l0_size: tuple[int, int] | None) -> None:
        self._l0_size, self._pixmap, self._l0_view = l0_size, None, None
        self.update()

    @property
    def has_thumbnail(self) -> bool:
        return self._pixmap is not None

    def set_thumbnail(self, image: QImage) -> None:
        self._pixmap = QPixmap.fromImage(image)  # QPixmap only here, on the UI thread
        self.update()

    def set_view_box(self, l0_box: Box | None) -> None:
        self._l0_view = l0_box
        self.update()

    def transform(self) -> ViewTransform | None:
        """Level-0 -> widget pixels: the whole slide fitted with a 4-px margin, aspect kept, centred."""
        if not self._l0_size:
            return None
        w, h = self._l0_size
        s = min((self.width() - 8) / w, (self.height() - 8) / h)
        if s <= 0:  # not laid out yet
            return None
        return ViewTransform(-(self.width() - w * s) / 2 / s, -(self.height() - h * s) / 2 / s, s)

    def image_rect(self) -> QRectF:
        """Where the slide sits in the widget."""
        t = self.transform()
        if t is None:
            return QRectF()
        box = t.box_to_screen(Box(0, 0, *self._l0_size))
        return QRectF(box.x0, box.y0, box.width, box.height)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(48, 48, 52))
        target = self.image_rect()
        if not target.isEmpty():
            if self._pixmap is not None:
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
                painter.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
            else:
                painter.fillRect(target, QColor(235, 235, 235))
            if self._l0_view is not None:
                v = self.transform().box_to_screen(self._l0_view)
                rect = QRectF(v.x0, v.y0, v.width, v.height)
                painter.setPen(QPen(QColor(230, 30, 30), 2))
                painter.drawRect(rect.intersected(target.adjusted(-1, -1, 1, 1)))
        painter.end()

    def _emit_at(self, pos: QPointF) -> None:
        t = self.transform()
        if t is None or self.image_rect().isEmpty():
            return
        l0_x, l0_y = t.to_l0(pos.x(), pos.y())
        self.center_requested.emit(min(max(l0_x, 0.0), float(self._l0_size[0])), min(max(l0_y, 0.0), float(self._l0_size[1])))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._emit_at(event.position())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._emit_at(event.position())
