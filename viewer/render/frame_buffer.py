"""The slide layer of the view kept at widget resolution between paints.

A paint that only changes what lies above the slide (live map patches, the rectangle being
drawn, the legend) blits this image instead of drawing the tiles again. That matters while a
model job runs: its worker thread holds the GIL for most of each switch interval, so a paint
made of dozens of Python-driven tile draws kept waiting for the GIL (5 ms alone, 110-190 ms
beside a busy Python thread here); one blit is a handful of calls.
"""

from __future__ import annotations

from collections.abc import Hashable

from PySide6.QtCore import QRect, QRectF, QSize
from PySide6.QtGui import QImage, QPainter, QRegion


class FrameBuffer:
    """A widget-sized image, the key of the view it shows, and the parts of it that are stale."""

    def __init__(self) -> None:
        self.image: QImage | None = None
        self._key: Hashable = None
        self._stale = QRegion()

    def stale_rects(self, key: Hashable, size: QSize, dpr: float) -> list[QRect]:
        """The widget rects to re-render before blitting: all of them when the view (``key``),
        the widget size or the device pixel ratio changed since the last call, else what
        :meth:`invalidate` marked. They count as fresh from now on."""
        device_size = QSize(round(size.width() * dpr), round(size.height() * dpr))
        image = self.image
        if key != self._key or image is None or image.size() != device_size or image.devicePixelRatio() != dpr:
            self.image = QImage(device_size, QImage.Format.Format_RGB32)
            self.image.setDevicePixelRatio(dpr)
            self._key = key
            self._stale = QRegion(QRect(0, 0, size.width(), size.height()))
        rects, self._stale = list(self._stale), QRegion()
        return rects

    def invalidate(self, rect: QRect) -> None:
        """Mark widget pixels stale (a tile arrived under them)."""
        self._stale += rect

    def reset(self) -> None:
        """Forget the image (another slide, or none): the next paint renders everything."""
        self.image, self._key, self._stale = None, None, QRegion()

    def blit(self, painter: QPainter, rect: QRect) -> None:
        """Copy the widget rect ``rect`` of the frame 1:1 into ``painter``."""
        dpr = self.image.devicePixelRatio()
        source = QRectF(rect.x() * dpr, rect.y() * dpr, rect.width() * dpr, rect.height() * dpr)
        painter.drawImage(QRectF(rect), self.image, source)
