"""Building checked shapely geometry from file coordinates: limits, repair, rectangles, ellipses.

All coordinates are level-0 slide pixels. File readers call these with a ``where`` text (file
and element) so every refusal or repair names what it was about.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from engine.annotations.errors import AnnotationError
from engine.geometry import Box

# Far beyond any slide (the largest are ~250k px a side) yet where float64 still resolves
# 1/1000 px, so a coordinate past it is a unit mix-up (nm, µm*1e3) or garbage, not a slide position.
L0_COORD_LIMIT = 1e8

# An ellipse keeps its box; its shapely polygon has this many vertices (a multiple of 4, so the
# four extreme points lie exactly on the box). The polygon's area is 0.04% below the ellipse's.
ELLIPSE_VERTICES = 128

POLYGONAL = ("Polygon", "MultiPolygon")


def coords_array(value, where: str, *, min_points: int = 1) -> np.ndarray:
    """``value`` (a list of [x, y] or [x, y, z] numbers) as an (n, 2) float64 array, checked."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise AnnotationError(f"{where}: coordinates are not a list of [x, y] pairs ({exc})") from None
    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise AnnotationError(f"{where}: coordinates are not a list of [x, y] number pairs "
                              f"(got {_describe(value)})")
    xy = arr[:, :2].astype(np.float64, copy=False)
    if len(xy) < min_points:
        raise AnnotationError(f"{where}: needs at least {min_points} point(s), has {len(xy)}")
    check_finite(xy, where)
    return xy


def check_finite(xy: np.ndarray, where: str) -> None:
    """Refuse NaN, infinite or absurdly large level-0 coordinates."""
    if xy.size == 0:
        return
    finite = np.isfinite(xy)
    if not finite.all():
        bad = xy[~finite.all(axis=1)][0]
        raise AnnotationError(f"{where}: coordinate ({bad[0]}, {bad[1]}) is not finite")
    big = np.abs(xy) > L0_COORD_LIMIT
    if big.any():
        bad = xy[big.any(axis=1)][0]
        raise AnnotationError(f"{where}: coordinate ({bad[0]}, {bad[1]}) is beyond ±{L0_COORD_LIMIT:.0e} level-0 "
                              "pixels; is the file in level-0 pixels?")


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def polygonal_or_none(geometry: BaseGeometry, where: str, warnings: list[str]) -> BaseGeometry | None:
    """``geometry`` if valid; else repaired with make_valid, keeping only its polygonal parts.

    A repair is reported in ``warnings``; a polygon with no area left is dropped and reported.
    """
    if shapely.is_valid(geometry) and not geometry.is_empty:
        return geometry
    reason = shapely.is_valid_reason(geometry)
    repaired = shapely.make_valid(geometry)
    parts = [p for p in shapely.get_parts(repaired) if p.geom_type in POLYGONAL and not p.is_empty]
    if not parts:
        warnings.append(f"{where}: polygon has no area ({reason}); dropped")
        return None
    fixed = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if fixed.geom_type == "MultiPolygon" and len(fixed.geoms) == 1:
        fixed = fixed.geoms[0]
    change = f"{geometry.area:.6g} -> {fixed.area:.6g} px²"
    shape = "" if fixed.geom_type == geometry.geom_type else f", now a {fixed.geom_type}"
    warnings.append(f"{where}: invalid polygon ({reason}) repaired{shape}; area {change}")
    return fixed


def polygon_from_rings(rings: list[np.ndarray], where: str, warnings: list[str]) -> shapely.Polygon | None:
    """A polygon from an exterior ring and holes (open or closed (n, 2) arrays), repaired if invalid.

    A ring of fewer than 3 distinct points encloses nothing: such a hole is left out, such an
    exterior drops the polygon, and either is reported in ``warnings``.
    """
    def closed(ring: np.ndarray) -> np.ndarray | None:
        if len(ring) and (ring[0] != ring[-1]).any():
            ring = np.vstack([ring, ring[:1]])
        return ring if len(ring) >= 4 else None

    shell = closed(rings[0])
    if shell is None:
        warnings.append(f"{where}: exterior ring has {len(rings[0])} point(s), no area; dropped")
        return None
    holes = []
    for i, ring in enumerate(rings[1:], 1):
        hole = closed(ring)
        if hole is None:
            warnings.append(f"{where}: hole {i} has {len(ring)} point(s), no area; left out")
        else:
            holes.append(hole)
    return polygonal_or_none(shapely.Polygon(shell, holes), where, warnings)


def is_rectangle(geometry: BaseGeometry) -> bool:
    """True for an axis-aligned rectangle without holes written as 4 corners (QuPath's test too)."""
    if geometry.geom_type != "Polygon" or len(geometry.interiors):
        return False
    c = shapely.get_coordinates(geometry.exterior)
    if len(c) != 5:
        return False
    c = c.tolist()
    # Plain Python: for five points numpy's per-call cost is most of the time (detection files).
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(c[:-1], c[1:], strict=True)]
    flat = [dy == 0 and dx != 0 for dx, dy in steps]
    upright = [dx == 0 and dy != 0 for dx, dy in steps]
    return (all(flat[0::2]) and all(upright[1::2])) or (all(upright[0::2]) and all(flat[1::2]))


def rectangle_polygon(l0_box: Box) -> shapely.Polygon:
    """The rectangle as a polygon, corners clockwise on screen from the top left (y grows down)."""
    if not (l0_box.width > 0 and l0_box.height > 0):
        raise AnnotationError(f"a rectangle needs a positive width and height, got {l0_box}")
    x0, y0, x1, y1 = l0_box.as_tuple()
    return shapely.Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def ellipse_polygon(l0_box: Box, vertices: int = ELLIPSE_VERTICES) -> shapely.Polygon:
    """The ellipse inscribed in ``l0_box`` as a polygon whose bounds are exactly the box."""
    if not (l0_box.width > 0 and l0_box.height > 0):
        raise AnnotationError(f"an ellipse needs a positive width and height, got {l0_box}")
    if vertices < 8 or vertices % 4:
        raise AnnotationError(f"an ellipse polygon needs a multiple of 4 vertices (>= 8), got {vertices}")
    cx, cy = l0_box.center
    t = np.arange(vertices) * (2 * math.pi / vertices)
    x = cx + l0_box.width / 2 * np.cos(t)
    y = cy + l0_box.height / 2 * np.sin(t)
    q = vertices // 4
    # Exact extremes, so the bounds (what QuPath reads an ellipse back from) are the box itself.
    x[0], x[2 * q] = l0_box.x1, l0_box.x0
    y[q], y[3 * q] = l0_box.y1, l0_box.y0
    y[0] = y[2 * q] = cy
    x[q] = x[3 * q] = cx
    return shapely.Polygon(np.column_stack([x, y]))


def bounds_box(geometry: BaseGeometry) -> Box:
    x0, y0, x1, y1 = geometry.bounds
    return Box(x0, y0, x1, y1)
