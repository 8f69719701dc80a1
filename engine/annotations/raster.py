"""Annotations onto a map grid: which cells they cover, by cell centre or by exact area.

A grid is an :class:`engine.geometry.MapGeometry` (a level-0 box split into (h, w) cells), so
masks line up with any map the engine writes. Both rasterisers work on polygon edges with numpy
only: the centre mask by even-odd crossings per row of cell centres (holes need no special case),
the coverage by the signed area each edge piece sweeps to its cell's right side, accumulated
along the row. Lines and points have no area and mark nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from engine.annotations.model import Annotation, AnnotationSet
from engine.geometry import MapGeometry


def area_geometry(annotations: AnnotationSet | Iterable[Annotation] | BaseGeometry) -> BaseGeometry:
    """The union of the areas in ``annotations`` (a shapely geometry is taken as it is)."""
    if isinstance(annotations, BaseGeometry):
        return annotations
    if isinstance(annotations, AnnotationSet):
        return annotations.area_geometry()
    parts = [a.geometry for a in annotations if a.has_area]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def rasterize(annotations: AnnotationSet | Iterable[Annotation] | BaseGeometry, grid: MapGeometry, *,
              coverage: bool = False) -> np.ndarray:
    """An (h, w) bool mask of the cells whose centre lies inside the union of the areas; with
    ``coverage``, the float64 share of each cell's area that they cover instead (exact).

    A centre exactly on a left or top edge counts as inside, on a right or bottom edge as outside,
    so adjacent annotations never both claim a cell.
    """
    h, w = grid.shape
    geometry = _in_cell_plane(area_geometry(annotations), grid)
    edges = _edges(geometry)
    if coverage:
        return _coverage(edges, h, w)
    return _centre_mask(edges, h, w)


def mask_from_annotations(annotations: AnnotationSet, grid: MapGeometry, include: Iterable[str | None] | None = None,
                          exclude: Iterable[str | None] = (), *, coverage: bool = False) -> np.ndarray:
    """The union of the ``include`` classes (none given: every annotation) minus the union of the
    ``exclude`` classes, rasterised as :func:`rasterize` does. ``None`` names unclassified ones."""
    include = None if include is None else list(include)
    geometry = annotations.area_geometry(include or None)
    exclude = list(exclude)
    if exclude:
        geometry = shapely.difference(geometry, annotations.area_geometry(exclude))
    return rasterize(geometry, grid, coverage=coverage)


def _in_cell_plane(geometry: BaseGeometry, grid: MapGeometry) -> BaseGeometry:
    """The polygonal part of ``geometry`` clipped to the grid, in map-cell units from its corner."""
    box = grid.l0_box
    if geometry.is_empty:
        return geometry
    gx0, gy0, gx1, gy1 = geometry.bounds
    if gx0 < box.x0 or gy0 < box.y0 or gx1 > box.x1 or gy1 > box.y1:
        geometry = shapely.intersection(geometry, shapely.box(box.x0, box.y0, box.x1, box.y1))
    polygons = [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and not p.is_empty]
    if not polygons:
        return shapely.Polygon()
    # Exteriors one way and holes the other, so the signed coverage of every covered cell is +1.
    polygons = [orient(p, sign=1.0) for p in polygons]
    return shapely.transform(shapely.MultiPolygon(polygons), grid.l0_to_map_xy)


def _edges(geometry: BaseGeometry) -> np.ndarray:
    """(n, 4) array of ring edges (x0, y0, x1, y1)."""
    if geometry.is_empty:
        return np.zeros((0, 4))
    rings = shapely.get_rings(shapely.get_parts(geometry))
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]
    return np.column_stack([xy[:-1][same], xy[1:][same]])


def _repeat_ranges(lo: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, the integers lo[i], lo[i] + 1, ... (counts[i] of them), flattened with their i."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, lo[owner] + (np.arange(len(owner)) - starts[owner])


def _centre_mask(edges: np.ndarray, h: int, w: int) -> np.ndarray:
    x0, y0, x1, y1 = edges.T
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows whose centre r + 0.5 lies in [ylo, yhi): each crossing counted once, vertices included.
    r0 = np.clip(np.ceil(ylo - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(yhi - 0.5), 0, h).astype(np.int64)
    edge, row = _repeat_ranges(r0, np.maximum(r1 - r0, 0))
    yc = row + 0.5
    x = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    # A crossing at x flips every cell whose centre c + 0.5 is at or right of it.
    col = np.clip(np.ceil(x - 0.5), 0, w).astype(np.int64)
    flips = np.bincount(row * (w + 1) + col, minlength=h * (w + 1)).reshape(h, w + 1)
    return (np.cumsum(flips, axis=1)[:, :w] & 1).astype(bool)


def _crossings(a: np.ndarray, b: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(edge, t) where each edge from a to b crosses an integer line 0..limit strictly inside."""
    lo = np.maximum(np.floor(np.minimum(a, b)) + 1, 0)
    hi = np.minimum(np.ceil(np.maximum(a, b)) - 1, limit)
    edge, k = _repeat_ranges(lo.astype(np.int64), np.maximum(hi - lo + 1, 0).astype(np.int64))
    return edge, (k - a[edge]) / (b[edge] - a[edge])


def _coverage(edges: np.ndarray, h: int, w: int) -> np.ndarray:
    n = len(edges)
    x0, y0, x1, y1 = edges.T
    ex, tx = _crossings(x0, x1, w)
    ey, ty = _crossings(y0, y1, h)
    ids = np.concatenate([np.arange(n), np.arange(n), ex, ey])
    ts = np.concatenate([np.zeros(n), np.ones(n), tx, ty])
    order = np.lexsort((ts, ids))
    ids, ts = ids[order], ts[order]
    px = x0[ids] + ts * (x1 - x0)[ids]
    py = y0[ids] + ts * (y1 - y0)[ids]
    same = ids[1:] == ids[:-1]  # consecutive points of one edge bound a piece inside one cell
    xa, ya, xb, yb = px[:-1][same], py[:-1][same], px[1:][same], py[1:][same]
    dy = yb - ya
    xm, ym = (xa + xb) / 2, (ya + yb) / 2
    row, col = np.floor(ym).astype(np.int64), np.floor(xm).astype(np.int64)
    keep = (dy != 0) & (row >= 0) & (row < h) & (col < w)
    dy, xm, row, col = dy[keep], xm[keep], row[keep], col[keep]
    # Each piece sweeps dy * (distance to its cell's right side) in its own cell and dy in every
    # cell right of it; the signed sums over a closed outline are minus the covered areas.
    inside = col >= 0
    swept = np.bincount(row[inside] * w + col[inside], weights=dy[inside] * (col[inside] + 1 - xm[inside]),
                        minlength=h * w).reshape(h, w)
    right = np.maximum(col + 1, 0)
    to_right = right < w
    cover = np.bincount(row[to_right] * w + right[to_right], weights=dy[to_right], minlength=h * w).reshape(h, w)
    return np.clip(-(swept + np.cumsum(cover, axis=1)), 0.0, 1.0)
