"""The pyramid painting widget: tiles of the level the zoom needs, coarser tiles where those
are missing, overlay layers in the level-0 plane, then screen-space decorations; and the
navigation (wheel, drag, keys) and rectangle drawing on it.

The widget never reads a slide: it asks the :class:`~viewer.workers.tiles.TileLoader` for tiles
(:mod:`viewer.render.tile_plan`) of the display level the zoom needs
(:mod:`viewer.model.pyramid`: virtual levels beyond a slide's coarsest, so zoomed-out tiles are
about screen resolution) and paints whatever the :class:`~viewer.render.tile_cache.TileCache`
holds (:mod:`viewer.render.slide_painter`). The slide layer is kept in a
:class:`~viewer.render.frame_buffer.FrameBuffer`: a repaint for overlay patches is a blit, and
tiles are drawn again only where the view moved or a tile arrived. A raster ``QPainter`` path on
purpose: a ``QOpenGLWidget`` does not work on the offscreen platform the tests and benchmarks use.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Protocol

from PySide6.QtCore import QPointF, QRect, QRectF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QResizeEvent, QWheelEvent
from PySide6.QtWidgets import QWidget

from engine.geometry import Box, lv_to_l0
from viewer.model.viewport import Viewport, ViewTransform, native_magnification
from viewer.render.frame_buffer import FrameBuffer
from viewer.render.scale_bar import paint_scale_bar
from viewer.render.slide_painter import OUTSIDE_COLOUR, SlidePainter, screen_rect
from viewer.render.tile_cache import TileCache
from viewer.render.tile_plan import tiles_to_request, tiles_under
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileKey, TileLoader, level_grid

#: Wheel: one notch (120 units) zooms by sqrt(2); keys zoom by this factor.
KEY_ZOOM = 1.5
#: Arrow keys pan by this fraction of the widget.
KEY_PAN_FRACTION = 0.2
#: While the view moves, tiles are scaled without filtering (3x cheaper: ~3 ms instead of
#: ~10 ms for a full 20x view here); this long after the last move it repaints smoothly.
SETTLE_MS = 150


class OverlayLayer(Protocol):
    """Something painted above the slide in the level-0 plane (saliency maps, annotations).

    ``paint`` runs on the UI thread inside ``paintEvent``: it must only draw ready-made
    images or shapes. Map level-0 coordinates with ``view.to_screen`` / ``view.box_to_screen``.
    """

    def paint(self, painter: QPainter, l0_visible_box: Box, view: ViewTransform) -> None: ...


class ToolDelegate(Protocol):
    """Where an annotation tool takes the view's mouse and keys: each returns True when it
    handled the event (the view then neither pans nor draws a region)."""

    def mouse_press(self, event: QMouseEvent, view: ViewTransform) -> bool: ...

    def mouse_move(self, event: QMouseEvent, view: ViewTransform) -> bool: ...

    def mouse_release(self, event: QMouseEvent, view: ViewTransform) -> bool: ...

    def mouse_double_click(self, event: QMouseEvent, view: ViewTransform) -> bool: ...

    def key_press(self, event: QKeyEvent) -> bool: ...


class SlideView(QWidget):
    viewport_changed = Signal()
    #: (l0_x, l0_y) under the mouse, or None when it is off the slide.
    cursor_moved = Signal(object)
    #: Every tile the current view needs at its target level is in the cache.
    tiles_complete = Signal()
    #: A read on a slide failed (once per slide; the message names the file).
    slide_failed = Signal(str)
    #: A rectangle was drawn (region mode or shift-drag): its level-0 Box, clipped to the slide.
    region_drawn = Signal(object)

    def __init__(self, loader: TileLoader, cache: TileCache, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loader, self.cache = loader, cache
        self._shared: SharedSource | None = None
        self._viewport: Viewport | None = None
        self._overlays: list[OverlayLayer] = []
        self._frame = FrameBuffer()  # the slide layer, so overlay-only repaints are a blit
        self._pin_level: int | None = None
        self._drag_from: QPointF | None = None
        self.region_mode = False  # the next left-drag draws a rectangle instead of panning
        self.tool_delegate: ToolDelegate | None = None
        self._band: tuple[QPointF, QPointF] | None = None  # screen corners of the rectangle being drawn
        self._failed_keys: set[TileKey] = set()
        self._reported_ids: set[int] = set()
        self._slide_painter = SlidePainter(cache, loader.tile)
        self._own_painter_calls = 0
        #: (perf_counter at the end, milliseconds, tiles drawn, fraction of the widget
        #: painted) of recent paintEvents: full frames and tile-arrival touch-ups apart.
        self.paint_log: deque[tuple[float, float, int, float]] = deque(maxlen=20_000)
        self.smooth = True  # filter scaled tiles once the view is still
        self._moving = False
        self._settle_timer = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle_timer.timeout.connect(self._settle)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setMinimumSize(200, 150)
        self._request_timer = QTimer(self, singleShot=True, interval=0)
        self._request_timer.timeout.connect(self._send_requests)
        loader.tile_ready.connect(self._on_tile_ready)
        loader.tile_failed.connect(self._on_tile_failed)

    # -- slide and viewport -------------------------------------------------------------
    @property
    def shared(self) -> SharedSource | None:
        return self._shared

    @property
    def viewport(self) -> Viewport | None:
        return self._viewport

    def set_slide(self, shared: SharedSource | None, viewport: Viewport | None = None) -> Viewport | None:
        """Show ``shared`` with ``viewport`` (a new fitted one when None); returns the viewport."""
        if self._shared is not None and self._shared is not shared:
            self.loader.cancel_slide(self._shared.slide_id)
        self._shared = shared
        self._frame.reset()
        if shared is None:
            self._viewport = None
        else:
            src = shared.source
            self._viewport = viewport or Viewport(*src.dimensions, self.width(), self.height())
            self._viewport.resize(self.width(), self.height())
            # Pin the coarsest level (virtual if the slide has virtual levels) when it is small
            # next to the cache, so there is always something to paint; a huge single-level
            # image without virtual levels is only cached like any level.
            coarsest = shared.pyramid[shared.pyramid.coarsest]
            small = coarsest.lv_width * coarsest.lv_height * 4 <= self.cache.max_bytes // 4
            self._pin_level = shared.pyramid.coarsest if small else None
        self._view_changed()
        return self._viewport

    def add_overlay(self, layer: OverlayLayer) -> None:
        self._overlays.append(layer)
        self.update()

    def remove_overlay(self, layer: OverlayLayer) -> None:
        self._overlays.remove(layer)
        self.update()

    def update_l0_box(self, l0_box: Box | None) -> None:
        """Repaint the widget pixels over ``l0_box`` (everything when None). Qt merges the
        rects of a burst into one paint event."""
        if l0_box is None or self._viewport is None:
            self.update()
            return
        rect = screen_rect(self._viewport.transform(), l0_box).adjusted(-1, -1, 1, 1)
        if rect.intersects(self.rect()):
            self.update(rect)  # the slide layer under it is not stale: this paint is a blit

    def set_region_mode(self, on: bool) -> None:
        self.region_mode = on
        self.setCursor(Qt.CursorShape.CrossCursor) if on else self.unsetCursor()

    @property
    def painter_calls(self) -> int:
        """QPainter calls made by paintEvent so far (soak test and benchmark)."""
        return self._own_painter_calls + self._slide_painter.painter_calls

    @property
    def moving(self) -> bool:
        """True from a view change until it settles (``SETTLE_MS``); tiles are drawn unfiltered meanwhile."""
        return self._moving

    def target_level(self) -> int:
        """The display level (an index into ``shared.pyramid``, virtual levels included) the
        current zoom paints from: the finest whose downsample is <= the view's."""
        return self._shared.pyramid.best_level_for_downsample(self._viewport.downsample)

    def native_magnification(self) -> float | None:
        src = self._shared.source if self._shared else None
        return native_magnification(src.objective_power, src.mpp) if src else None

    # -- navigation ---------------------------------------------------------------------
    def zoom_by(self, factor: float, screen_pos: QPointF | None = None) -> None:
        if self._viewport is None:
            return
        pos = screen_pos or QPointF(self.width() / 2, self.height() / 2)
        self._viewport.zoom_about(pos.x(), pos.y(), factor)
        self._view_changed()

    def fit(self) -> None:
        if self._viewport is not None:
            self._viewport.fit()
            self._view_changed()

    def set_magnification(self, mag: float) -> None:
        """Zoom so that the view shows the slide at ``mag`` (e.g. 20x) around its centre."""
        native = self.native_magnification()
        if self._viewport is not None and native:
            self._viewport.set_scale(mag / native)
            self._view_changed()

    def pan_by(self, screen_dx: float, screen_dy: float) -> None:
        if self._viewport is not None:
            self._viewport.pan_screen(screen_dx, screen_dy)
            self._view_changed()

    def center_on(self, l0_x: float, l0_y: float) -> None:
        if self._viewport is not None:
            self._viewport.center_on(l0_x, l0_y)
            self._view_changed()

    def _view_changed(self) -> None:
        self._moving = True
        self._settle_timer.start()
        self.update()
        if not self._request_timer.isActive():
            self._request_timer.start()  # coalesce a burst of moves into one request
        self.viewport_changed.emit()

    @Slot()
    def _settle(self) -> None:
        self._moving = False
        if self.smooth:
            self.update()

    # -- tile requests ------------------------------------------------------------------
    def missing_visible_tiles(self) -> list[TileKey]:
        if self._shared is None or self._viewport is None:
            return []
        keys = tiles_under(self._shared, self.target_level(), self._viewport.l0_visible_box(), self.loader.tile)
        return [k for k in keys if k not in self.cache and k not in self._failed_keys]

    @Slot()
    def _send_requests(self) -> None:
        if self._shared is None or self._viewport is None:
            return
        wanted = tiles_to_request(self._shared, self.target_level(), self._viewport.l0_visible_box(), self.loader.tile,
                                  self._pin_level, lambda k: k not in self.cache and k not in self._failed_keys)
        self.loader.request(self._shared, wanted)

    @Slot(object, object)
    def _on_tile_ready(self, key: TileKey, image: QImage) -> None:
        if self._shared is None or key.slide_id != self._shared.slide_id:
            return  # a tile of a slide no longer shown: it would only take cache space
        self.cache.put(key, image, pinned=key.level == self._pin_level)
        if self._viewport is None:
            return
        display_level = self._shared.pyramid[key.level]
        lv_tile = level_grid(display_level, self.loader.tile).tile_box(key.col, key.row)
        l0_tile = lv_to_l0(lv_tile, display_level.downsample)
        rect = screen_rect(self._viewport.transform(), l0_tile).adjusted(-1, -1, 1, 1)
        if rect.intersects(self.rect()):
            self._frame.invalidate(rect)
            self.update(rect)
            if key.level == self.target_level() and not self.missing_visible_tiles():
                self.tiles_complete.emit()

    @Slot(object, str)
    def _on_tile_failed(self, key: TileKey, message: str) -> None:
        self._failed_keys.add(key)  # painted from coarser levels from now on, never re-read
        if key.slide_id not in self._reported_ids:
            self._reported_ids.add(key.slide_id)  # one report per slide, not one per tile
            self.slide_failed.emit(message)

    # -- painting -----------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        start = time.perf_counter()
        tiles_before = self._slide_painter.tiles_drawn
        painter = QPainter(self)
        rects = list(event.region())
        try:
            # Tiles arriving one by one dirty small rects; painting just those (not their
            # bounding box) keeps a paint during loading to a few tiles.
            self.paint_view(painter, rects)
        finally:
            painter.end()
        end = time.perf_counter()
        area = sum(r.width() * r.height() for r in rects) / max(1, self.width() * self.height())
        self.paint_log.append((end, (end - start) * 1000, self._slide_painter.tiles_drawn - tiles_before, area))

    def paint_view(self, painter: QPainter, clip_rects: list[QRect]) -> None:
        """Paint the parts of the view under ``clip_rects`` (widget pixels) into ``painter``:
        the slide layer from the frame buffer (re-rendering its stale parts first), then the
        overlay layers and decorations."""
        if self._shared is None or self._viewport is None or self._shared.source.closed:
            for rect in clip_rects:
                painter.fillRect(rect, OUTSIDE_COLOUR)
            self._own_painter_calls += len(clip_rects)
            return
        t = self._viewport.transform()
        smooth = self.smooth and not self._moving
        stale = self._frame.stale_rects((self._shared.slide_id, t, smooth), self.size(), self.devicePixelRatioF())
        if stale:
            frame_painter = QPainter(self._frame.image)
            try:
                frame_painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
                self._slide_painter.paint(frame_painter, self._shared, t, self.target_level(), stale)
            finally:
                frame_painter.end()
        for rect in clip_rects:
            self._frame.blit(painter, rect)
        self._own_painter_calls += len(clip_rects)
        src = self._shared.source
        l0_visible = self._viewport.l0_visible_box().intersect(Box(0, 0, *src.dimensions))
        for layer in self._overlays:
            layer.paint(painter, l0_visible, t)
        if src.mpp:
            self._own_painter_calls += paint_scale_bar(painter, self.rect(), src.mpp[0] / t.scale)
        if self._band is not None:
            painter.setPen(QColor(255, 200, 0))
            painter.drawRect(QRectF(self._band[0], self._band[1]).normalized())

    def render_image(self) -> QImage:
        """The view as an image of the widget's size, painted from the cache (UI thread)."""
        image = QImage(self.size(), QImage.Format.Format_RGB32)
        painter = QPainter(image)
        try:
            self.paint_view(painter, [image.rect()])
        finally:
            painter.end()
        return image

    # -- input --------------------------------------------------------------------------
    def resizeEvent(self, event: QResizeEvent) -> None:
        if self._viewport is not None:
            self._viewport.resize(self.width(), self.height())
            self._view_changed()
        super().resizeEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        notches = event.angleDelta().y() / 120
        if notches:
            self.zoom_by(math.sqrt(2) ** notches, event.position())
        event.accept()

    def _delegated(self, handler: str, event) -> bool:
        if self.tool_delegate is None or self._viewport is None or self.region_mode:
            return False
        return getattr(self.tool_delegate, handler)(event, self._viewport.transform())

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if not self._delegated("mouse_double_click", event):
            self.mousePressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._delegated("mouse_press", event):
            return
        if self.region_mode or event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._band = (event.position(), event.position())
        else:
            self._drag_from = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag_from is None and self._band is None and self._delegated("mouse_move", event):
            pass  # the tool is drawing or moving: no pan
        elif self._band is not None:
            self._band = (self._band[0], pos)
            self.update()
        elif self._drag_from is not None and event.buttons() & Qt.MouseButton.LeftButton:
            delta = pos - self._drag_from
            self._drag_from = pos
            self.pan_by(delta.x(), delta.y())
        if self._viewport is not None:
            l0_x, l0_y = self._viewport.transform().to_l0(pos.x(), pos.y())
            on_slide = 0 <= l0_x < self._viewport.l0_width and 0 <= l0_y < self._viewport.l0_height
            self.cursor_moved.emit((l0_x, l0_y) if on_slide else None)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        if self._drag_from is None and self._band is None and self._delegated("mouse_release", event):
            return
        if self._band is not None:
            start, self._band = self._band[0], None
            self.update()
            self._finish_region(start, event.position())
            return
        self._drag_from = None
        self.unsetCursor()

    def _finish_region(self, screen_a: QPointF, screen_b: QPointF) -> None:
        if self._viewport is None:
            return
        t = self._viewport.transform()
        ax, ay = t.to_l0(screen_a.x(), screen_a.y())
        bx, by = t.to_l0(screen_b.x(), screen_b.y())
        l0_box = Box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
        l0_box = l0_box.intersect(Box(0, 0, self._viewport.l0_width, self._viewport.l0_height)).outer_int()
        self.set_region_mode(False)
        if l0_box.width >= 1 and l0_box.height >= 1:
            self.region_drawn.emit(l0_box)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.tool_delegate is not None and self.tool_delegate.key_press(event):
            return
        key = event.key()
        step_x, step_y = self.width() * KEY_PAN_FRACTION, self.height() * KEY_PAN_FRACTION
        pans = {Qt.Key.Key_Left: (step_x, 0), Qt.Key.Key_Right: (-step_x, 0), Qt.Key.Key_Up: (0, step_y), Qt.Key.Key_Down: (0, -step_y)}
        if key in pans:
            self.pan_by(*pans[key])
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(KEY_ZOOM)
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_by(1 / KEY_ZOOM)
        elif key == Qt.Key.Key_0:
            self.fit()
        else:
            super().keyPressEvent(event)
