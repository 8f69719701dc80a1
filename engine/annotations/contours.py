"""Maps to annotations: thresholded regions as polygons, or one square detection per cell.

Regions are exact on the grid: each row's runs of cells at or above the threshold become
boxes, and their union (in integer cell units, so shapely's overlay is exact) gives every
4-connected component's outline with its holes. Cells that touch only at a corner are separate
components. The outlines are then moved to level 0 and simplified.
"""

from __future__ import annotations

import math

import numpy as np
import shapely

from engine.annotations.errors import AnnotationError
from engine.annotations.model import AREA_PX, AREA_UM, Annotation, mpp_xy
from engine.annotations.raster import rasterize
from engine.geometry import MapGeometry

# detections_from_map makes one Python object per cell; past this a floor is almost surely wrong.
MAX_DETECTIONS = 500_000


def _checked_map(values, grid: MapGeometry) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape != tuple(grid.shape):
        raise AnnotationError(f"the map is {v.shape} but its grid is {tuple(grid.shape)} cells")
    return v


def region_cells(mask: np.ndarray) -> shapely.Geometry:
    """The union of the True cells of ``mask`` as polygons in cell units (x = column, y = row)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)  # same row-major order as the starts, one end per start
    if len(rows) == 0:
        return shapely.Polygon()
    return shapely.union_all(shapely.box(starts, rows, ends, rows + 1))


def polygons_from_map(values, grid: MapGeometry, threshold: float, *, class_name: str | None,
                      min_area_l0: float = 0.0, simplify_l0: float | None = None, mpp=None,
                      score_name: str = "score") -> list[Annotation]:
    """One polygon annotation (with holes) per connected region of cells ``>= threshold``.

    ``simplify_l0``: Douglas-Peucker tolerance in level-0 px (topology kept); None takes three
    quarters of a cell, enough to turn stair steps (whose corners lie up to 0.71 cell off the
    slope) into straight edges; 0 keeps the exact cell outlines. Regions under
    ``min_area_l0`` px² are left out. Each annotation measures its area (``Area px^2``, and
    ``Area µm^2`` with an ``mpp``) and the mean and max of the map over its own cells.
    """
    v = _checked_map(values, grid)
    mxy = mpp_xy(mpp)
    cw, ch = grid.l0_cell
    if simplify_l0 is None:
        simplify_l0 = 0.75 * min(cw, ch)
    if not (math.isfinite(simplify_l0) and simplify_l0 >= 0):
        raise AnnotationError(f"simplify_l0 must be a finite number >= 0, got {simplify_l0!r}")
    with np.errstate(invalid="ignore"):
        mask = v >= threshold  # NaN cells are never in a region
    out = []
    for cells in shapely.get_parts(region_cells(mask)):
        if cells.is_empty or cells.area * cw * ch < min_area_l0:
            continue
        l0 = shapely.transform(shapely.simplify(cells, 0), grid.map_to_l0_xy)
        c0, r0, c1, r1 = (int(round(b)) for b in cells.bounds)
        own_grid = MapGeometry(grid.cells_to_l0(c0, r0, c1, r1), (r1 - r0, c1 - c0))
        scores = v[r0:r1, c0:c1][rasterize(l0, own_grid)]  # cell centres are half a cell from any edge
        if simplify_l0 > 0:
            l0 = shapely.simplify(l0, simplify_l0, preserve_topology=True)
        measurements = {AREA_PX: float(l0.area)}
        if mxy is not None:
            measurements[AREA_UM] = float(l0.area) * mxy[0] * mxy[1]
        measurements[f"Mean {score_name}"] = float(scores.mean())
        measurements[f"Max {score_name}"] = float(scores.max())
        out.append(Annotation.from_geometry(l0, class_name=class_name, measurements=measurements))
    return out


def detections_from_map(values, grid: MapGeometry, floor: float, *, class_name: str | None = None,
                        measurement: str = "score") -> list[Annotation]:
    """One square detection per map cell whose value is above ``floor``, carrying that value as
    a measurement (QuPath colours detections by a measurement, which draws the map)."""
    v = _checked_map(values, grid)
    with np.errstate(invalid="ignore"):
        rows, cols = np.nonzero(v > floor)
    if len(rows) > MAX_DETECTIONS:
        raise AnnotationError(f"{len(rows)} cells are above {floor}; more than {MAX_DETECTIONS} detections "
                              "would make a file no viewer opens quickly (raise the floor)")
    corners = np.column_stack([grid.map_to_l0_xy(np.column_stack([cols, rows])),
                               grid.map_to_l0_xy(np.column_stack([cols + 1, rows + 1]))])
    return Annotation.rectangles(corners, class_name=class_name,
                                 object_type="detection",
                                 measurements=[{measurement: value} for value in v[rows, cols].tolist()])
