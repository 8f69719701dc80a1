"""A painting soak test: PySide6 6.12.0 on Python 3.11 crashed (``Fatal Python error:
none_dealloc``) after about 5,000 QPainter calls, because fillRect / drawPixmap / setOpacity
each leaked a reference to None. 200,000 calls through the view's real paint path would
bring that crash back if a future release repeats the bug."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor

from engine.slides import ArraySlide
from viewer.render.slide_view import SlideView
from viewer.render.tile_cache import TileCache
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileLoader

SOAK_CALLS = 200_000


class OpacityOverlay:
    """Exercises the other calls that leaked: setOpacity and fillRect, every frame."""

    def __init__(self):
        self.calls = 0

    def paint(self, painter, l0_visible_box, view):
        for i in range(4):
            painter.setOpacity(0.25 + 0.1 * i)
            painter.fillRect(10 * i, 10, 8, 8, QColor(255, 0, 0))
        painter.setOpacity(1.0)
        self.calls += 9


def test_two_hundred_thousand_painter_calls_through_the_view(qtbot):
    rgb = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    loader = TileLoader(workers=2, tile=64)  # small tiles: many drawImage calls per frame
    view = SlideView(loader, TileCache(64 * 2**20))
    qtbot.addWidget(view)
    try:
        view.resize(640, 480)
        view.show()
        qtbot.waitExposed(view)
        overlay = OpacityOverlay()
        view.add_overlay(overlay)
        view.set_slide(SharedSource(ArraySlide(rgb, mpp=0.5)))
        view.viewport.set_scale(1.0)
        view.center_on(512, 512)
        qtbot.waitUntil(lambda: not view.missing_visible_tiles(), timeout=10_000)
        start = view.painter_calls
        frame = 0
        while view.painter_calls + overlay.calls - start < SOAK_CALLS:
            view.pan_by(3 if frame % 40 < 20 else -3, 0)  # stay on cached tiles, keep repainting
            view.repaint()
            frame += 1
        assert view.painter_calls + overlay.calls - start >= SOAK_CALLS
        assert frame > 500  # many full frames, not one giant one
    finally:
        loader.shutdown()
