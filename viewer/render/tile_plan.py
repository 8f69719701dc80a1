"""Which tiles the view needs: those of a display level under a level-0 box (nearest the box's
centre first), and a whole request (the pinned coarsest level, the visible tiles, then a
prefetch ring one tile wide). Pure functions of the slide's pyramid; the view asks the loader."""

from __future__ import annotations

from typing import Callable

from engine.geometry import Box, l0_to_lv, lv_to_l0
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileKey, level_grid


def tiles_under(shared: SharedSource, level: int, l0_box: Box, tile: int, ordered: bool = True) -> list[TileKey]:
    """The tiles of display ``level`` overlapping ``l0_box`` (clipped to the slide); ``ordered``:
    nearest the box's centre first (what the user looks at loads first)."""
    l0_box = l0_box.intersect(Box(0, 0, *shared.source.dimensions))
    if l0_box.is_empty:
        return []
    display_level = shared.pyramid[level]
    lv_box = l0_to_lv(l0_box, display_level.downsample)
    grid = level_grid(display_level, tile)
    keys = [TileKey(shared.slide_id, level, c, r) for c, r in grid.tiles_in(lv_box)]
    if ordered:
        cx, cy = lv_box.center
        keys.sort(key=lambda k: ((k.col + 0.5) * tile - cx) ** 2 + ((k.row + 0.5) * tile - cy) ** 2)
    return keys


def tiles_to_request(shared: SharedSource, level: int, l0_visible: Box, tile: int, pin_level: int | None,
                     needed: Callable[[TileKey], bool]) -> list[TileKey]:
    """Most urgent first: the pinned level's tiles (so there is always something to paint), the
    visible ones, then a ring one tile wide around the view, at the same level; only those
    ``needed`` (not cached, not failed)."""
    wanted: list[TileKey] = []
    if pin_level is not None:
        wanted += [k for k in tiles_under(shared, pin_level, Box(0, 0, *shared.source.dimensions), tile) if needed(k)]
    visible = tiles_under(shared, level, l0_visible, tile)
    wanted += [k for k in visible if needed(k)]
    l0_ring = lv_to_l0(Box(0, 0, tile, tile), shared.pyramid[level].downsample).width
    seen = set(visible)
    wanted += [k for k in tiles_under(shared, level, l0_visible.expand(l0_ring), tile) if k not in seen and needed(k)]
    return wanted
