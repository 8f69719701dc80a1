"""Boxes, tile grids and level conversions (torch-free, Qt-free).

A :class:`Box` carries no plane of its own: the variable name says it (``l0_box`` is in
level-0 pixels, ``lv_box`` in the pixels of one pyramid level, ``out_box`` in an output
map). All conversions between planes live here so that no module invents its own rounding.

One rounding rule per conversion:

- boxes reported to a caller (map boxes, patch boxes) are scaled exactly, never rounded:
  :func:`lv_to_l0`, :meth:`LevelRegion.local_to_l0`, :meth:`LevelRegion.cells_to_l0`;
- the level pixels that must be read to cover a level-0 box round outward (the floor of the
  start, the ceiling of the end, of the exact quotients): :func:`l0_to_lv_covering`;
- the integer level-0 position a read of a level pixel starts at, and back, round to the
  nearest: :func:`lv_to_l0_origin`, :func:`l0_to_lv_origin` (a level origin survives the
  round trip whenever the downsample is at least 1);
- a level-0 point on a level, for comparisons only, is the exact quotient: :func:`l0_to_lv_point`;
- renderers sample a level pixel at its centre: :func:`lv_centres_to_l0`;
- a head whose stages stride ``s`` over the trunk's map has cells of ``s`` trunk cells, head cell
  ``i`` over trunk cells ``[s i, s i + s)``: :func:`head_cell_hw`, :func:`trunk_mask_on_head_grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Box:
    """A half-open axis-aligned box ``[x0, x1) x [y0, y1)`` in one coordinate plane."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def of(cls, value: "Box | tuple[float, float, float, float] | list[float]") -> "Box":
        """``value`` as a Box: a Box as it is, or ``(x0, y0, x1, y1)`` (JSON, CLI arguments)."""
        if isinstance(value, Box):
            return value
        x0, y0, x1, y1 = value
        return cls(x0, y0, x1, y1)

    def as_tuple(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``, for files and messages."""
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def scale(self, factor: float) -> "Box":
        """The same box in a plane whose unit is ``1 / factor`` of this one's."""
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor)

    def translate(self, dx: float, dy: float) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def intersect(self, other: "Box") -> "Box":
        """The overlap; an empty box (``is_empty``) when they do not overlap."""
        return Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))

    def union(self, other: "Box") -> "Box":
        """The smallest box holding both (empty boxes are ignored)."""
        if self.is_empty:
            return other
        if other.is_empty:
            return self
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def expand(self, margin: float) -> "Box":
        return Box(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin)

    def outer_int(self) -> "Box":
        """The smallest box with integer corners that holds this one."""
        return Box(math.floor(self.x0), math.floor(self.y0), math.ceil(self.x1), math.ceil(self.y1))


def l0_to_lv(l0_box: Box, downsample: float) -> Box:
    """Level-0 box -> the same area in the pixels of a level with this downsample."""
    return l0_box.scale(1.0 / downsample)


def lv_to_l0(lv_box: Box, downsample: float) -> Box:
    """Level box -> the same area in level-0 pixels."""
    return lv_box.scale(downsample)


def l0_to_lv_covering(l0_box: Box, downsample: float) -> Box:
    """The level pixels covering ``l0_box``: integer corners rounded outward, so that no part of
    the level-0 box is left out (``//`` floors the exact quotient of the two floats)."""
    return Box(int(l0_box.x0 // downsample), int(l0_box.y0 // downsample),
               int(-(-l0_box.x1 // downsample)), int(-(-l0_box.y1 // downsample)))


def lv_to_l0_origin(lv_x: float, lv_y: float, downsample: float) -> tuple[int, int]:
    """The integer level-0 position a read of level pixel ``(lv_x, lv_y)`` starts at: the
    nearest (``read_region`` takes level-0 integers and divides them by the downsample)."""
    return round(lv_x * downsample), round(lv_y * downsample)


def lv_to_l0_read_origin(lv_x: float, lv_y: float, downsample: float, l0_size: tuple[int, int]) -> tuple[int, int]:
    """:func:`lv_to_l0_origin` kept inside a slide of ``l0_size`` (width, height): a level's last
    pixel can map past level 0's last one when the downsample is not an integer. Tile reads,
    virtual-level reads and exports all start their reads here, so they agree on the rounding."""
    l0_x, l0_y = lv_to_l0_origin(lv_x, lv_y, downsample)
    return min(l0_x, l0_size[0] - 1), min(l0_y, l0_size[1] - 1)


def l0_to_lv_origin(l0_x: float, l0_y: float, downsample: float) -> tuple[int, int]:
    """The level pixel a read at integer level-0 position ``(l0_x, l0_y)`` starts at: the nearest."""
    return round(l0_x / downsample), round(l0_y / downsample)


def l0_to_lv_point(l0_x: float, l0_y: float, downsample: float) -> tuple[float, float]:
    """A level-0 point on a level's plane, unrounded (for bounds checks)."""
    return l0_x / downsample, l0_y / downsample


def lv_centres_to_l0(lv_start: int, lv_stop: int, downsample: float, dtype=np.float64) -> np.ndarray:
    """Level-0 coordinates of the centres of level pixels ``[lv_start, lv_stop)`` along one axis
    (where a renderer samples a level pixel), computed in ``dtype``."""
    return (np.arange(lv_start, lv_stop, dtype=dtype) + 0.5) * downsample


@dataclass(frozen=True)
class LevelRegion:
    """A region of one pyramid level: origin ``lv_x0, lv_y0`` and size ``lv_w`` x ``lv_h``, in
    that level's pixels.

    Positions "local" to the region are level pixels counted from its origin (what a streamed
    network sees as its input plane); the methods below take them to level 0.
    """

    level: int
    downsample: float
    lv_x0: int
    lv_y0: int
    lv_w: int
    lv_h: int

    @property
    def lv_box(self) -> Box:
        """The region on its level's plane."""
        return Box(self.lv_x0, self.lv_y0, self.lv_x0 + self.lv_w, self.lv_y0 + self.lv_h)

    @property
    def l0_box(self) -> Box:
        """The region on the level-0 plane (exact)."""
        return lv_to_l0(self.lv_box, self.downsample)

    def local_to_l0(self, local_box: Box) -> Box:
        """A box given relative to the region's origin (level pixels) on the level-0 plane (exact)."""
        return lv_to_l0(local_box.translate(self.lv_x0, self.lv_y0), self.downsample)

    def cells_to_l0(self, map_rows: tuple[int, int], map_cols: tuple[int, int], cell_hw: tuple[int, int]) -> Box:
        """Cells ``[rows) x [cols)`` of a grid of ``cell_hw`` (h, w) level pixels anchored at the
        region's origin, on the level-0 plane (exact; cells past the region's edge are not cut)."""
        cell_h, cell_w = cell_hw
        return self.local_to_l0(Box(map_cols[0] * cell_w, map_rows[0] * cell_h, map_cols[1] * cell_w, map_rows[1] * cell_h))

    def l0_read_origin(self, local_x: int, local_y: int) -> tuple[int, int]:
        """The integer level-0 position at which to read the region's local pixel ``(local_x, local_y)``."""
        return lv_to_l0_origin(self.lv_x0 + local_x, self.lv_y0 + local_y, self.downsample)

    def l0_to_cells(self, l0_x: float, l0_y: float, cell_hw: tuple[int, int]) -> tuple[float, float]:
        """A level-0 point as (row, col) in cells of ``cell_hw`` level pixels from the region's
        origin, unrounded (e.g. where on the output map to start)."""
        lv_x, lv_y = l0_to_lv_point(l0_x, l0_y, self.downsample)
        return (lv_y - self.lv_y0) / cell_hw[0], (lv_x - self.lv_x0) / cell_hw[1]


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of ``tile`` x ``tile`` tiles over one level of ``lv_width`` x ``lv_height``.

    Tiles on the right and bottom edges are clipped to the level, never padded, so every
    tile box lies inside the level and a slide read of it is always in bounds.
    """

    lv_width: int
    lv_height: int
    tile: int

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.lv_width <= 0 or self.lv_height <= 0:
            raise ValueError(f"TileGrid needs positive sizes, got {self.lv_width}x{self.lv_height} tile {self.tile}")

    @property
    def cols(self) -> int:
        return -(-self.lv_width // self.tile)

    @property
    def rows(self) -> int:
        return -(-self.lv_height // self.tile)

    def tile_box(self, col: int, row: int) -> Box:
        """The tile's box in this level's pixels (integer corners, clipped at the edges)."""
        if not (0 <= col < self.cols and 0 <= row < self.rows):
            raise IndexError(f"tile ({col}, {row}) outside a {self.cols}x{self.rows} grid")
        x0, y0 = col * self.tile, row * self.tile
        return Box(x0, y0, min(x0 + self.tile, self.lv_width), min(y0 + self.tile, self.lv_height))

    def tiles_in(self, lv_box: Box) -> Iterator[tuple[int, int]]:
        """(col, row) of every tile that overlaps ``lv_box`` (clipped to the grid), row by row."""
        c0 = max(0, math.floor(lv_box.x0 / self.tile))
        r0 = max(0, math.floor(lv_box.y0 / self.tile))
        c1 = min(self.cols, math.ceil(lv_box.x1 / self.tile))
        r1 = min(self.rows, math.ceil(lv_box.y1 / self.tile))
        for row in range(r0, r1):
            for col in range(c0, c1):
                yield col, row


@dataclass(frozen=True)
class MapGeometry:
    """Where a map lies: ``shape`` (h, w) cells evenly covering ``l0_box``."""

    l0_box: Box
    shape: tuple[int, int]

    @property
    def l0_cell(self) -> tuple[float, float]:
        """(width, height) of one map cell in level-0 pixels."""
        return self.l0_box.width / self.shape[1], self.l0_box.height / self.shape[0]

    def cells_to_l0(self, map_c0: int, map_r0: int, map_c1: int, map_r1: int) -> Box:
        cw, ch = self.l0_cell
        return Box(self.l0_box.x0 + map_c0 * cw, self.l0_box.y0 + map_r0 * ch, self.l0_box.x0 + map_c1 * cw, self.l0_box.y0 + map_r1 * ch)

    def l0_to_cells(self, l0_box: Box) -> tuple[int, int, int, int]:
        """(c0, r0, c1, r1): the cells touching ``l0_box``, clipped to the map (may be empty)."""
        cw, ch = self.l0_cell
        h, w = self.shape
        c0 = min(max(math.floor((l0_box.x0 - self.l0_box.x0) / cw), 0), w)
        r0 = min(max(math.floor((l0_box.y0 - self.l0_box.y0) / ch), 0), h)
        c1 = min(max(math.ceil((l0_box.x1 - self.l0_box.x0) / cw), 0), w)
        r1 = min(max(math.ceil((l0_box.y1 - self.l0_box.y0) / ch), 0), h)
        return c0, r0, c1, r1

    def cell_at(self, l0_x: float, l0_y: float) -> tuple[int, int] | None:
        """(row, col) of the cell under a level-0 point, or None off the map."""
        if not self.l0_box.contains(l0_x, l0_y):
            return None
        cw, ch = self.l0_cell
        return min(int((l0_y - self.l0_box.y0) / ch), self.shape[0] - 1), min(int((l0_x - self.l0_box.x0) / cw), self.shape[1] - 1)

    def l0_to_map_xy(self, l0_xy) -> np.ndarray:
        """Level-0 points (n, 2) of (x, y) as (column, row) map-cell coordinates from the map's
        corner, unrounded (cell (r, c) spans [c, c + 1) x [r, r + 1)); float64."""
        h, w = self.shape
        scale = np.array([w / self.l0_box.width, h / self.l0_box.height])
        return (np.asarray(l0_xy, dtype=np.float64) - np.array([self.l0_box.x0, self.l0_box.y0])) * scale

    def map_to_l0_xy(self, map_xy) -> np.ndarray:
        """(column, row) map-cell coordinates (n, 2) as level-0 (x, y) points, exact (the inverse
        of :meth:`l0_to_map_xy`); float64."""
        cw, ch = self.l0_cell
        return np.asarray(map_xy, dtype=np.float64) * np.array([cw, ch]) + np.array([self.l0_box.x0, self.l0_box.y0])


def head_cell_hw(trunk_cell_hw: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """(h, w) level pixels of a head cell: ``stride`` (rows, cols) trunk cells of ``trunk_cell_hw`` each."""
    return trunk_cell_hw[0] * stride[0], trunk_cell_hw[1] * stride[1]


def trunk_mask_on_head_grid(mask: np.ndarray, stride: tuple[int, int], head_hw: tuple[int, int]) -> np.ndarray:
    """A bool mask (..., H, W) on the trunk's grid carried to the head's grid of ``head_hw`` cells
    (the head's stages striding ``stride`` (rows, cols) trunk cells): head cell (i, j) is in when
    any trunk cell of ``[s0 i, s0 i + s0) x [s1 j, s1 j + s1)`` is. Trunk cells past the head's
    last cell count for none; head cells past the trunk's map are out."""
    mask = np.asarray(mask, dtype=bool)
    (h, w), (sh, sw) = head_hw, stride
    rows, cols = min(mask.shape[-2], h * sh), min(mask.shape[-1], w * sw)
    padded = np.zeros(mask.shape[:-2] + (h * sh, w * sw), bool)
    padded[..., :rows, :cols] = mask[..., :rows, :cols]
    return padded.reshape(mask.shape[:-2] + (h, sh, w, sw)).any(axis=(-3, -1))
