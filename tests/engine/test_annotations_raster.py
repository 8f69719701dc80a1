"""engine.annotations.raster: centre masks and exact coverage on map grids, include/exclude classes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from engine.annotations import (
    CAMELYON16_EXCLUDED_CLASSES,
    CAMELYON16_TUMOR_CLASSES,
    Annotation,
    AnnotationSet,
    mask_from_annotations,
    rasterize,
)
from engine.geometry import Box, MapGeometry


def _centres(grid: MapGeometry) -> tuple[np.ndarray, np.ndarray]:
    cw, ch = grid.l0_cell
    h, w = grid.shape
    return np.meshgrid(grid.l0_box.x0 + (np.arange(w) + 0.5) * cw, grid.l0_box.y0 + (np.arange(h) + 0.5) * ch)


def _exact_coverage(geometry, grid: MapGeometry) -> np.ndarray:
    h, w = grid.shape
    cells = [grid.cells_to_l0(c, r, c + 1, r + 1) for r in range(h) for c in range(w)]
    boxes = shapely.box(*np.array([b.as_tuple() for b in cells]).T)
    return (shapely.area(shapely.intersection(boxes, geometry)) / shapely.area(boxes)).reshape(h, w)


def test_rectangle_covers_exactly_its_cells():
    grid = MapGeometry(Box(0, 0, 1000, 500), (50, 100))  # 10 px cells
    s = AnnotationSet([Annotation.rectangle(Box(100, 100, 300, 200))])
    mask = rasterize(s, grid)
    assert mask.dtype == bool and mask.shape == (50, 100)
    assert mask.sum() == 20 * 10 and mask[10:20, 10:30].all()
    coverage = rasterize(s, grid, coverage=True)
    assert coverage.sum() == pytest.approx(200) and coverage.max() == 1.0
    # Shifted by a quarter cell: centres still decide the mask, coverage is fractional at the edges.
    shifted = AnnotationSet([Annotation.rectangle(Box(102.5, 100, 302.5, 200))])
    assert rasterize(shifted, grid).sum() == 200
    c = rasterize(shifted, grid, coverage=True)
    assert c[10, 10] == pytest.approx(0.75) and c[10, 30] == pytest.approx(0.25) and c.sum() == pytest.approx(200)


def test_polygon_with_a_hole_counts_cells_exactly():
    grid = MapGeometry(Box(1000, 2000, 1100, 2100), (20, 20))  # 5 px cells, offset origin
    ring = [(1000, 2000), (1100, 2000), (1100, 2100), (1000, 2100)]
    hole = [(1025, 2025), (1075, 2025), (1075, 2075), (1025, 2075)]
    s = AnnotationSet([Annotation.polygon(ring, holes=[hole])])
    mask = rasterize(s, grid)
    assert mask.sum() == 400 - 100 and not mask[5:15, 5:15].any() and mask[4, 4] and mask[15, 15]
    assert rasterize(s, grid, coverage=True).sum() == pytest.approx(300)


def test_centre_mask_matches_shapely_and_coverage_is_exact():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 2 * np.pi, 60))
    r = rng.uniform(20, 45, 60)
    outline = np.column_stack([50.3 + r * np.cos(t), 48.7 + 0.8 * r * np.sin(t)])
    polygon = shapely.make_valid(shapely.Polygon(outline, [[(40.1, 40.2), (55.3, 41.7), (47.9, 57.4)]]))
    s = AnnotationSet([Annotation.from_geometry(g) for g in shapely.get_parts(polygon)])
    grid = MapGeometry(Box(-3.7, 1.9, 110.3, 96.1), (47, 61))  # non-square cells, annotations past the edges
    mask = rasterize(s, grid)
    assert (mask == shapely.contains_xy(polygon, *_centres(grid))).all()
    np.testing.assert_allclose(rasterize(s, grid, coverage=True), _exact_coverage(polygon, grid), atol=1e-9)


def test_overlaps_count_once_and_lines_points_and_outside_mark_nothing():
    grid = MapGeometry(Box(0, 0, 100, 100), (10, 10))
    s = AnnotationSet([Annotation.rectangle(Box(0, 0, 50, 50)), Annotation.rectangle(Box(20, 20, 70, 70)),
                       Annotation.line([(0, 0), (100, 100)]), Annotation.point(95, 95),
                       Annotation.rectangle(Box(500, 500, 600, 600))])
    assert rasterize(s, grid).sum() == 25 + 25 - 9
    assert rasterize(s, grid, coverage=True).max() == 1.0  # overlap does not add up to 2
    assert rasterize(AnnotationSet(), grid).sum() == 0 and rasterize(AnnotationSet(), grid, coverage=True).sum() == 0


def test_include_minus_exclude_classes():
    grid = MapGeometry(Box(0, 0, 4000, 4000), (40, 40))  # 100 px cells
    s = AnnotationSet([
        Annotation.rectangle(Box(1000, 1000, 3000, 3000), class_name="_0"),
        Annotation.rectangle(Box(0, 0, 500, 500), class_name="Tumor"),
        Annotation.rectangle(Box(1500, 1500, 2000, 2000), class_name="_2"),
        Annotation.rectangle(Box(3500, 3500, 4000, 4000)),  # unclassified
    ])
    tumour = mask_from_annotations(s, grid, include=CAMELYON16_TUMOR_CLASSES, exclude=CAMELYON16_EXCLUDED_CLASSES)
    assert tumour.sum() == 400 - 25 + 25 and not tumour[15:20, 15:20].any()
    assert mask_from_annotations(s, grid).sum() == 400 + 25 + 25  # no include: everything (the _2 lies inside _0)
    assert mask_from_annotations(s, grid, include=[]).sum() == 450
    assert mask_from_annotations(s, grid, include=[None]).sum() == 25
    assert mask_from_annotations(s, grid, exclude=["_2", None]).sum() == 400 - 25 + 25
    coverage = mask_from_annotations(s, grid, include=["_0"], exclude=["_2"], coverage=True)
    assert coverage.sum() == pytest.approx(375)
