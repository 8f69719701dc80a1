"""The slide layer of the view: the surround, the slide's background, then the tiles of the
display level the zoom needs, each missing one filled from the finest coarser level whose tiles
are all cached. Only cached images are drawn (UI thread)."""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF
from PySide6.QtGui import QColor, QPainter

from engine.geometry import Box, l0_to_lv, lv_to_l0
from viewer.model.viewport import ViewTransform
from viewer.render.tile_cache import TileCache
from viewer.render.tile_plan import tiles_under
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileKey, level_grid

OUTSIDE_COLOUR = QColor(48, 48, 52)


def screen_rect(t: ViewTransform, l0_box: Box) -> QRect:
    """The widget pixels of a level-0 box. Each edge is rounded on its own, so neighbouring
    tiles share edges: no seams, no overlap."""
    x0, y0 = t.to_screen(l0_box.x0, l0_box.y0)
    x1, y1 = t.to_screen(l0_box.x1, l0_box.y1)
    left, top = round(x0), round(y0)
    return QRect(left, top, round(x1) - left, round(y1) - top)


class SlidePainter:
    """Paints the slide layer from ``cache``; counts the QPainter calls and tiles it draws."""

    def __init__(self, cache: TileCache, tile: int) -> None:
        self.cache, self.tile = cache, tile
        self.painter_calls = 0
        self.tiles_drawn = 0

    def paint(self, painter: QPainter, shared: SharedSource, t: ViewTransform, level: int, clip_rects: list[QRect]) -> None:
        """The slide layer under ``clip_rects`` (widget pixels), painted from display ``level``."""
        for rect in clip_rects:
            painter.fillRect(rect, OUTSIDE_COLOUR)
        self.painter_calls += len(clip_rects)
        src = shared.source
        slide_rect = screen_rect(t, Box(0, 0, *src.dimensions))
        bg = QColor(*src.background_rgb)
        ds = shared.pyramid[level].downsample
        grid = level_grid(shared.pyramid[level], self.tile)
        keys: dict[TileKey, None] = {}  # ordered set: a tile under two rects is drawn once
        for rect in clip_rects:
            painter.fillRect(slide_rect.intersected(rect), bg)
            l0_clip = Box(*t.to_l0(rect.left(), rect.top()), *t.to_l0(rect.right() + 1, rect.bottom() + 1))
            keys.update(dict.fromkeys(tiles_under(shared, level, l0_clip, self.tile, ordered=False)))
        self.painter_calls += len(clip_rects)
        for key in keys:
            l0_tile = lv_to_l0(grid.tile_box(key.col, key.row), ds)
            image = self.cache.get(key)
            if image is not None:
                painter.drawImage(screen_rect(t, l0_tile), image)
                self.painter_calls += 1
                self.tiles_drawn += 1
            else:
                self._paint_from_coarser(painter, shared, t, l0_tile, level + 1)

    def _paint_from_coarser(self, painter: QPainter, shared: SharedSource, t: ViewTransform, l0_box: Box,
                            first_level: int) -> None:
        """Fill ``l0_box`` from the finest coarser level whose covering tiles are all cached."""
        pyramid = shared.pyramid
        for level in range(first_level, len(pyramid)):
            ds = pyramid[level].downsample
            grid = level_grid(pyramid[level], self.tile)
            cells = list(grid.tiles_in(l0_to_lv(l0_box, ds)))
            images = [self.cache.peek(TileKey(shared.slide_id, level, c, r)) for c, r in cells]
            if not cells or any(img is None for img in images):
                continue
            for (col, row), image in zip(cells, images, strict=True):
                lv_tile = grid.tile_box(col, row)
                l0_part = lv_to_l0(lv_tile, ds).intersect(l0_box)
                if l0_part.is_empty:
                    continue
                lv_part = l0_to_lv(l0_part, ds)
                source = QRectF(lv_part.x0 - lv_tile.x0, lv_part.y0 - lv_tile.y0, lv_part.width, lv_part.height)
                painter.drawImage(QRectF(screen_rect(t, l0_part)), image, source)
                self.painter_calls += 1
                self.tiles_drawn += 1
            return
