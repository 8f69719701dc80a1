"""The colorbar legend: a gradient with its range and the layer's name.

One painter function serves both the legend drawn over the slide (so exported PNGs carry
it) and the colorbar widget in the overlay panel (``viewer.widgets.colorbar``).
"""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter

from engine.colormaps import lut_rgba
from viewer.model.layers import LayerStyle

LEGEND_W, LEGEND_H = 210, 58
MARGIN = 14


@lru_cache(maxsize=None)
def gradient_image(colormap: str) -> QImage:
    """The colormap as a 256 x 1 image (a constant per colormap, made once)."""
    lut = lut_rgba(colormap)
    image = QImage(bytes(lut.tobytes()), len(lut), 1, 4 * len(lut), QImage.Format.Format_RGBA8888)
    return image.copy()  # own the pixels; the bytes object may go


def format_value(value: float) -> str:
    return f"{value:.3g}"


def threshold_label(style: LayerStyle) -> str:
    """What the threshold keeps: "≥ t", or "> vmin" when t sits at the range's start (a floor that
    hides only cells equal to vmin, such as saliency's exact zeros, would print as "≥ 1e-30")."""
    if style.vmax > style.vmin and 0 < style.threshold - style.vmin <= 1e-6 * (style.vmax - style.vmin):
        return f"> {format_value(style.vmin)}"
    return f"≥ {format_value(style.threshold)}"


def paint_colorbar(painter: QPainter, rect: QRectF, title: str, style: LayerStyle) -> None:
    """Title on top, gradient in the middle, vmin / vmax (and the threshold) below."""
    painter.save()
    font = QFont(painter.font())
    font.setPointSizeF(9)
    painter.setFont(font)
    text_h = painter.fontMetrics().height()
    painter.setPen(QColor(20, 20, 20))
    inner = rect.adjusted(8, 4, -8, -4)
    painter.drawText(QRectF(inner.left(), inner.top(), inner.width(), text_h), Qt.AlignmentFlag.AlignLeft, title)
    bar = QRectF(inner.left(), inner.top() + text_h + 2, inner.width(), max(6.0, inner.height() - 2 * text_h - 4))
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    painter.drawImage(bar, gradient_image(style.colormap))
    painter.drawRect(bar)
    if style.threshold is not None and style.vmax > style.vmin:
        frac = min(max((style.threshold - style.vmin) / (style.vmax - style.vmin), 0.0), 1.0)
        x = bar.left() + frac * bar.width()
        painter.fillRect(QRectF(bar.left(), bar.top(), x - bar.left(), bar.height()), QColor(255, 255, 255, 170))
        painter.drawLine(int(x), int(bar.top()), int(x), int(bar.bottom()))
    labels = QRectF(inner.left(), bar.bottom() + 1, inner.width(), text_h)
    painter.drawText(labels, Qt.AlignmentFlag.AlignLeft, format_value(style.vmin))
    painter.drawText(labels, Qt.AlignmentFlag.AlignRight, format_value(style.vmax))
    if style.threshold is not None:
        painter.drawText(labels, Qt.AlignmentFlag.AlignHCenter, threshold_label(style))
    painter.restore()


def paint_legend(painter: QPainter, device_width: int, title: str, style: LayerStyle) -> None:
    """The legend in the view's top-right corner on a light box (screen plane)."""
    box = QRectF(device_width - MARGIN - LEGEND_W, MARGIN, LEGEND_W, LEGEND_H)
    painter.save()
    painter.setOpacity(1.0)
    painter.fillRect(box, QColor(255, 255, 255, 225))
    painter.restore()
    paint_colorbar(painter, box, title, style)
