"""engine.annotations: maps to polygons and detections, and stats of annotation sets."""

from __future__ import annotations

import numpy as np
import pytest

from engine.annotations import (
    AREA_PX,
    AREA_UM,
    Annotation,
    AnnotationError,
    AnnotationSet,
    detections_from_map,
    load_annotations,
    polygons_from_map,
    rasterize,
    save_annotations,
    stats,
)
from engine.geometry import Box, MapGeometry

CELL = 16  # level-0 px per map cell


@pytest.fixture
def blob_map() -> tuple[np.ndarray, MapGeometry]:
    """Three blobs of known size on a 40 x 60 map: a ring (150 cells, a 16-cell hole), a block, a dot."""
    v = np.zeros((40, 60))
    v[5:15, 5:20] = 0.9
    v[8:12, 9:13] = 0.1
    v[6, 6] = 1.0
    v[20:30, 30:50] = np.linspace(0.5, 0.7, 20)[None, :]
    v[35, 55] = 0.8
    v[0, 0] = np.nan
    return v, MapGeometry(Box(1000, 2000, 1000 + 60 * CELL, 2000 + 40 * CELL), (40, 60))


def test_map_blobs_become_polygons_with_holes_areas_and_scores(blob_map):
    v, grid = blob_map
    ring, block, dot = polygons_from_map(v, grid, 0.5, class_name="Tumor", simplify_l0=0, mpp=0.5)
    assert ring.class_name == "Tumor" and ring.kind == "polygon" and len(ring.geometry.interiors) == 1
    assert ring.area_l0 == (150 - 16) * CELL**2 and ring.l0_box == Box(1080, 2080, 1320, 2240)
    assert ring.measurements[AREA_PX] == (150 - 16) * CELL**2
    assert ring.measurements[AREA_UM] == (150 - 16) * CELL**2 * 0.25
    assert ring.measurements["Max score"] == 1.0
    assert ring.measurements["Mean score"] == pytest.approx((0.9 * 133 + 1.0) / 134)
    assert block.area_l0 == 200 * CELL**2 and len(block.geometry.exterior.coords) == 5  # no collinear vertices
    assert block.measurements["Mean score"] == pytest.approx(0.6) and block.measurements["Max score"] == 0.7
    assert dot.area_l0 == CELL**2
    # Exact outlines rasterise back to exactly the thresholded cells.
    assert (rasterize([ring, block, dot], grid) == (np.nan_to_num(v) >= 0.5)).all()


def test_small_regions_dropped_simplification_and_corner_touching_cells(blob_map):
    v, grid = blob_map
    assert len(polygons_from_map(v, grid, 0.5, class_name=None, min_area_l0=2 * CELL**2)) == 2
    assert polygons_from_map(v, grid, 2.0, class_name="x") == []
    diagonal = np.zeros((4, 4))
    diagonal[0, 0] = diagonal[1, 1] = 1
    assert len(polygons_from_map(diagonal, MapGeometry(Box(0, 0, 4, 4), (4, 4)), 0.5, class_name="x")) == 2
    staircase = np.tril(np.ones((30, 30)))
    grid = MapGeometry(Box(0, 0, 30 * CELL, 30 * CELL), (30, 30))
    (exact,) = polygons_from_map(staircase, grid, 0.5, class_name="x", simplify_l0=0)
    (smooth,) = polygons_from_map(staircase, grid, 0.5, class_name="x")  # default: 3/4 of a cell
    assert len(exact.geometry.exterior.coords) == 2 * 30 + 2 + 1  # 62 corners, closed
    assert len(smooth.geometry.exterior.coords) < 10
    assert smooth.area_l0 == pytest.approx(exact.area_l0, rel=0.05)
    with pytest.raises(AnnotationError, match="grid is"):
        polygons_from_map(np.zeros((3, 3)), grid, 0.5, class_name="x")


def test_detections_one_square_per_cell_above_the_floor(tmp_path, blob_map):
    v, grid = blob_map
    detections = detections_from_map(v, grid, 0.85, class_name="Tumor")
    assert len(detections) == 150 - 16  # the ring's cells
    assert len(detections_from_map(v, grid, 0.79)) == 150 - 16 + 1  # and the dot
    assert len(detections_from_map(v, grid, 0.8)) == 150 - 16  # strictly above the floor
    first = detections[0]
    assert first.kind == "rectangle" and first.object_type == "detection" and first.class_name == "Tumor"
    assert first.l0_box == Box(1000 + 5 * CELL, 2000 + 5 * CELL, 1000 + 6 * CELL, 2000 + 6 * CELL)
    assert first.measurements == {"score": 0.9}
    path = tmp_path / "cells.geojson"
    save_annotations(AnnotationSet(detections), path)
    back = load_annotations(path).annotations
    assert back == AnnotationSet(detections) and back[0].is_detection


def test_stats_counts_classes_and_areas():
    s = AnnotationSet([
        Annotation.rectangle(Box(0, 0, 100, 50), class_name="Tumor"),
        Annotation.rectangle(Box(0, 0, 10, 10), class_name="Tumor"),
        Annotation.polygon([(0, 0), (20, 0), (0, 20)]),
        Annotation.point(5, 5, class_name="Tumor"),
        Annotation.line([(0, 0), (1, 1)]),
    ])
    result = stats(s, mpp=0.5)
    assert result.count == 5 and result.kinds == {"rectangle": 2, "polygon": 1, "point": 1, "line": 1}
    tumour, unclassified = result.classes["Tumor"], result.classes[None]
    assert (tumour.count, tumour.area_count, tumour.total_area_l0, tumour.mean_area_l0) == (3, 2, 5100, 2550)
    assert (tumour.total_area_um2, tumour.mean_area_um2) == (1275, 637.5)
    assert (unclassified.count, unclassified.area_count, unclassified.total_area_l0) == (2, 1, 200)
    assert result.total.total_area_l0 == 5300 and result.total.mean_area_l0 == pytest.approx(5300 / 3)
    plain = stats(s)
    assert plain.total.total_area_um2 is None and plain.mpp is None
    table = result.table()
    assert "Tumor" in table and "(unclassified)" in table and "µm²" in table and "1275" in table
    assert "µm²" not in plain.table()
    assert result.as_dict()["classes"]["(unclassified)"]["count"] == 2
    assert stats(AnnotationSet()).total.mean_area_l0 is None
