"""engine.geometry: boxes, tile grids, plane conversions."""

from __future__ import annotations

import pytest

from engine.geometry import Box, TileGrid, l0_to_lv, lv_to_l0


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
