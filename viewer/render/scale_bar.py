"""A scale bar painted in screen space over the slide (µm or mm, 1-2-5 lengths)."""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter

from viewer.model.viewport import format_length_um, nice_scale_bar_um

MAX_BAR_PX = 160
MARGIN = 14


def paint_scale_bar(painter: QPainter, widget_rect: QRect, um_per_screen_px: float) -> int:
    """Paint the bar in the bottom-left corner; returns the number of QPainter calls made."""
    length_um = nice_scale_bar_um(um_per_screen_px, MAX_BAR_PX)
    if length_um <= 0:
        return 0
    bar_px = length_um / um_per_screen_px
    label = format_length_um(length_um)
    font = QFont(painter.font())
    font.setPointSizeF(9)
    painter.save()
    painter.setFont(font)
    text_h = painter.fontMetrics().height()
    text_w = painter.fontMetrics().horizontalAdvance(label)
    box_w = max(bar_px, text_w) + 16
    box = QRectF(widget_rect.left() + MARGIN, widget_rect.bottom() - MARGIN - text_h - 18, box_w, text_h + 18)
    painter.fillRect(box, QColor(255, 255, 255, 215))
    bar = QRectF(box.left() + 8, box.bottom() - 10, bar_px, 4)
    painter.fillRect(bar, QColor(20, 20, 20))
    painter.setPen(QColor(20, 20, 20))
    painter.drawText(QRectF(box.left() + 8, box.top() + 3, box_w - 16, text_h), Qt.AlignmentFlag.AlignLeft, label)
    painter.restore()
    return 6
