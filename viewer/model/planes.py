"""The one plane conversion ``engine.geometry`` lacks: where a read of a level box starts in
level-0 pixels, as OpenSlide's ``read_region`` wants it.

``read_region`` takes the region's top-left corner in level-0 pixels (integers) and its size in
the level's pixels. The corner is the level box's corner through :func:`engine.geometry.lv_to_l0`,
rounded to the nearest level-0 pixel and kept inside the slide (a level's last pixel can map
past level 0's last one when the downsample is not an integer). Tile reads, virtual-level reads
and exports all start their reads here, so they agree on the rounding.
"""

from __future__ import annotations

from engine.geometry import Box, lv_to_l0


def l0_read_origin(lv_x: float, lv_y: float, downsample: float, l0_size: tuple[int, int]) -> tuple[int, int]:
    """The level-0 pixel (x, y) where a read of the level pixel ``(lv_x, lv_y)`` starts, on a level
    with ``downsample``, clamped inside a slide of ``l0_size`` (width, height)."""
    l0 = lv_to_l0(Box(lv_x, lv_y, lv_x, lv_y), downsample)
    return min(round(l0.x0), l0_size[0] - 1), min(round(l0.y0), l0_size[1] - 1)
