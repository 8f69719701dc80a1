"""engine.geometry: boxes, tile grids, plane conversions."""

from __future__ import annotations

import numpy as np
import pytest

from engine.geometry import (
    Box,
    LevelRegion,
    TileGrid,
    l0_to_lv,
    l0_to_lv_covering,
    l0_to_lv_origin,
    l0_to_lv_point,
    lv_centres_to_l0,
    lv_to_l0,
    lv_to_l0_origin,
)


def test_box_intersect_union_and_empty():
    a, b = Box(0, 0, 10, 10), Box(5, 5, 20, 8)
    assert a.intersect(b) == Box(5, 5, 10, 8)
    assert a.union(b) == Box(0, 0, 20, 10)
    assert Box(0, 0, 1, 1).intersect(Box(2, 2, 3, 3)).is_empty
    assert a.union(Box(3, 3, 3, 3)) == a  # empty boxes do not grow a union


def test_box_scale_and_plane_round_trip():
    l0_box = Box(400, 800, 1200, 1600)
    lv_box = l0_to_lv(l0_box, 4.0)
    assert lv_box == Box(100, 200, 300, 400)
    assert lv_to_l0(lv_box, 4.0) == l0_box
    assert Box(0.5, 1.2, 2.1, 3.0).outer_int() == Box(0, 1, 3, 3)
    assert Box(0, 0, 4, 2).center == (2, 1)
    assert Box(0, 0, 4, 2).contains(3.9, 1.9) and not Box(0, 0, 4, 2).contains(4, 1)


def test_tile_grid_clips_edge_tiles_and_lists_overlaps():
    grid = TileGrid(1000, 600, 256)
    assert (grid.cols, grid.rows) == (4, 3)
    assert grid.tile_box(3, 2) == Box(768, 512, 1000, 600)
    assert list(grid.tiles_in(Box(250, 10, 260, 20))) == [(0, 0), (1, 0)]
    assert list(grid.tiles_in(Box(-500, -500, 10_000, 1))) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert list(grid.tiles_in(Box(2000, 2000, 3000, 3000))) == []
    with pytest.raises(IndexError):
        grid.tile_box(4, 0)
    with pytest.raises(ValueError):
        TileGrid(0, 10, 256)


def test_level_boxes_covering_a_level0_box_round_outward():
    assert l0_to_lv_covering(Box(400, 800, 1200, 1600), 4.0) == Box(100, 200, 300, 400)  # exact stays exact
    assert l0_to_lv_covering(Box(401, 799, 1201, 1599.5), 4.0) == Box(100, 199, 301, 400)
    lv_box = l0_to_lv_covering(Box(13, 7, 1000, 700), 4.000234)
    assert lv_to_l0(lv_box, 4.000234).intersect(Box(13, 7, 1000, 700)) == Box(13, 7, 1000, 700)  # nothing left out
    assert all(isinstance(v, int) for v in lv_box.as_tuple())


def test_read_origins_round_to_the_nearest_and_survive_the_round_trip():
    assert lv_to_l0_origin(10, 3, 4.0) == (40, 12)
    assert lv_to_l0_origin(10, 3, 4.06) == (41, 12)  # 40.6 -> 41, 12.18 -> 12
    assert l0_to_lv_origin(41, 12, 4.06) == (10, 3)
    for ds in (1.0, 2.0, 3.9999, 4.000234, 16.5):
        for lv in range(0, 500, 7):
            assert l0_to_lv_origin(*lv_to_l0_origin(lv, lv + 1, ds), ds) == (lv, lv + 1), (ds, lv)
    assert l0_to_lv_point(41, 12, 4.0) == (10.25, 3.0)


def test_level_region_converts_its_local_boxes_and_cells_to_level0():
    region = LevelRegion(level=1, downsample=4.0, lv_x0=10, lv_y0=20, lv_w=100, lv_h=50)
    assert region.lv_box == Box(10, 20, 110, 70)
    assert region.l0_box == Box(40, 80, 440, 280)
    assert region.local_to_l0(Box(0, 0, 5, 5)) == Box(40, 80, 60, 100)
    # Cells of 8 (rows) x 16 (cols) level pixels from the region's origin; the last ones pass its edge.
    assert region.cells_to_l0((0, 7), (0, 7), (8, 16)) == Box(40, 80, 40 + 7 * 16 * 4, 80 + 7 * 8 * 4)
    assert region.cells_to_l0((1, 2), (3, 4), (8, 16)) == Box(40 + 48 * 4, 80 + 8 * 4, 40 + 64 * 4, 80 + 16 * 4)
    assert region.l0_read_origin(3, 1) == (52, 84)
    assert region.l0_to_cells(40 + 64 * 4, 80 + 16 * 4, (8, 16)) == (2.0, 4.0)


def test_level_pixel_centres_on_level0():
    assert lv_centres_to_l0(2, 5, 4.0).tolist() == [10.0, 14.0, 18.0]
    assert lv_centres_to_l0(0, 2, 2.0, np.float32).dtype == np.float32
