"""Paints the shown slide's map layers over it: each visible layer's colour bytes as an image in
the level-0 plane, then the active layer's legend in the view's corner.

The painter wraps each layer's BGRA array in a ``QImage`` that borrows its memory, so patches
copied into the array show without any conversion; a whole-layer re-map replaces the array, and
the painter wraps the new one the next time it paints.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter

from engine.geometry import Box
from viewer.model.layers import LayerKey
from viewer.model.overlays import Layer, OverlayStack
from viewer.model.viewport import ViewTransform
from viewer.render.legend import paint_legend


def wrap_bgra(bgra: np.ndarray) -> QImage:
    """A QImage over an (h, w, 4) C-contiguous premultiplied BGRA array (no copy: keep the array)."""
    h, w = bgra.shape[:2]
    return QImage(bgra.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied)


class OverlayPainter:
    """The view's overlay layer (``SlideView.add_overlay``) for one :class:`OverlayStack` at a
    time; ``repaint(l0_box or None)`` is called whenever the stack changes."""

    def __init__(self, repaint: Callable[[Box | None], None]) -> None:
        self._repaint = repaint
        self.stack: OverlayStack | None = None
        self._images: dict[LayerKey, tuple[np.ndarray, QImage]] = {}

    def set_stack(self, stack: OverlayStack | None) -> None:
        if self.stack is not None:
            self.stack.changed.disconnect(self._repaint)
        self.stack = stack
        self._images.clear()
        if stack is not None:
            stack.changed.connect(self._repaint)
        self._repaint(None)

    def _image(self, layer: Layer) -> QImage:
        cached = self._images.get(layer.key)
        if cached is None or cached[0] is not layer.bgra:
            cached = (layer.bgra, wrap_bgra(layer.bgra))  # the tuple keeps the array alive for the image
            self._images[layer.key] = cached
        return cached[1]

    def paint(self, painter: QPainter, l0_visible_box: Box, view: ViewTransform) -> None:
        stack = self.stack
        if stack is None:
            return
        for key in [k for k in self._images if k not in stack.layers]:
            del self._images[key]  # layers of an earlier run
        for layer in stack.layers.values():
            self._paint_layer(painter, layer, l0_visible_box, view)
        active = stack.layers.get(stack.active) if stack.active else None
        if active is not None and active.style.visible:
            paint_legend(painter, painter.device().width(), str(active.key), active.style)

    def _paint_layer(self, painter: QPainter, layer: Layer, l0_visible_box: Box, view: ViewTransform) -> None:
        if not layer.style.visible or layer.style.opacity <= 0:
            return
        c0, r0, c1, r1 = layer.geometry.l0_to_cells(l0_visible_box)
        if c1 <= c0 or r1 <= r0:
            return
        # Draw only the visible cells: the target rect is those cells' exact level-0 box in
        # screen space (unrounded), so each cell lands where the map says at every zoom.
        screen = view.box_to_screen(layer.geometry.cells_to_l0(c0, r0, c1, r1))
        painter.save()
        painter.setOpacity(layer.style.opacity)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, layer.style.smooth)
        painter.drawImage(QRectF(screen.x0, screen.y0, screen.width, screen.height), self._image(layer),
                          QRectF(c0, r0, c1 - c0, r1 - r0))
        painter.restore()
