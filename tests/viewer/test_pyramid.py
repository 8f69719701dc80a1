"""viewer.model.pyramid and viewer.workers.tiles: virtual levels beyond a slide's coarsest, their
pixels, and a single-level slide shown zoomed out from them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine.geometry import Box, TileGrid
from engine.slides import ArraySlide, open_slide
from tests.conftest import BLOCK, BLOCK_COLOURS, STRIPE_BLOCK, SYNTH_L0_SIZE, synthetic_rgb
from viewer.model.pyramid import VIRTUAL_SOURCE_MAX_PIXELS, DisplayPyramid
from viewer.workers import tiles as tiles_module
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileKey, area_average, read_virtual_region


def _levels(sizes, downsamples):
    return SimpleNamespace(level_dimensions=tuple(sizes), level_downsamples=tuple(downsamples))


def test_a_single_level_slide_gets_halved_virtual_levels_until_it_is_small():
    pyramid = DisplayPyramid.of(_levels([(3000, 2001)], [1.0]))
    assert [(lv.lv_width, lv.lv_height, lv.downsample, lv.factor) for lv in pyramid.levels] == [
        (3000, 2001, 1.0, 1),
        (1500, 1001, 2.0, 2),
        (750, 501, 4.0, 4),
    ]
    assert [lv.is_virtual for lv in pyramid.levels] == [False, True, True]
    assert all(lv.source_level == 0 for lv in pyramid.levels)
    # OpenSlide's rule over all levels: the finest whose downsample is not above the view's.
    assert [pyramid.best_level_for_downsample(d) for d in (0.5, 1.9, 2.0, 3.9, 40)] == [0, 0, 1, 1, 2]


def test_virtual_levels_continue_from_the_coarsest_real_level():
    pyramid = DisplayPyramid.of(_levels([(16000, 8000), (4000, 2000)], [1.0, 4.0]))
    assert [(lv.downsample, lv.source_level, lv.factor) for lv in pyramid.levels] == [(1.0, 0, 1), (4.0, 1, 1), (8.0, 1, 2), (16.0, 1, 4)]


def test_a_small_pyramid_or_a_huge_single_level_gets_none():
    assert len(DisplayPyramid.of(_levels([(4096, 3072), (1024, 768), (256, 192)], [1, 4, 16]))) == 3
    side = int(VIRTUAL_SOURCE_MAX_PIXELS**0.5) + 1
    assert len(DisplayPyramid.of(_levels([(side, side)], [1.0]))) == 1


def test_area_average_is_the_block_mean_including_partial_edge_blocks():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 10, 3), np.uint8)
    out = area_average(rgb, 4)
    assert out.shape == (2, 3, 3)
    for r in range(2):
        for c in range(3):
            block = rgb[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].astype(np.float64)
            assert np.abs(out[r, c] - block.mean(axis=(0, 1))).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("chunk_rows", [1024, 8])
def test_virtual_tiles_are_area_averages_of_their_real_level(monkeypatch, chunk_rows):
    monkeypatch.setattr(tiles_module, "CHUNK_ROWS", chunk_rows)  # 8: many chunks per tile
    rgb = np.random.default_rng(1).integers(0, 256, (1100, 2100, 3), np.uint8)
    slide = ArraySlide([rgb, rgb[::2, ::2].copy()])  # a real level 1 (ds 2) to build from
    pyramid = DisplayPyramid.of(slide)
    level = pyramid[2]  # ds 4: level 1 (1050x550) halved
    assert (level.source_level, level.factor, level.lv_width, level.lv_height) == (1, 2, 525, 275)
    grid = TileGrid(level.lv_width, level.lv_height, 256)
    src = rgb[::2, ::2].astype(np.float64)
    for col, row in [(0, 0), (2, 1)]:  # an inner tile and the clipped bottom-right corner
        lv_box = grid.tile_box(col, row)
        got = read_virtual_region(slide, level, lv_box)
        assert got.shape == (int(lv_box.height), int(lv_box.width), 3)
        part = src[int(lv_box.y0) * 2 : int(lv_box.y1) * 2, int(lv_box.x0) * 2 : int(lv_box.x1) * 2]
        h, w = part.shape[:2]
        expected = part[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        assert np.abs(got[: h // 2, : w // 2] - expected).max() <= 0.5 + 1e-9


# --- the view on a single-level slide ---------------------------------------------------
@pytest.fixture(scope="module")
def single_level_slide_path(tmp_path_factory):
    """The known-colour synthetic slide as ONE level (4096x3072): virtual levels ds 2 and 4."""
    from engine.io.svs import write_svs_array

    return write_svs_array(tmp_path_factory.mktemp("single") / "single.svs", synthetic_rgb(), downsamples=(1,), mpp=0.25, app_mag=40)


def _pixel(image, l0_x, l0_y, view):
    sx, sy = view.viewport.transform().to_screen(l0_x, l0_y)
    assert 0 <= sx < view.width() and 0 <= sy < view.height()
    return image.pixelColor(int(sx), int(sy)).getRgb()[:3]


def _assert_block_colours(view):
    image = view.render_image()
    vis = view.viewport.l0_visible_box().intersect(Box(0, 0, *SYNTH_L0_SIZE))
    checked = 0
    for r, row in enumerate(BLOCK_COLOURS):
        for c, colour in enumerate(row):
            l0_x, l0_y = c * BLOCK + BLOCK // 2, r * BLOCK + BLOCK // 2
            if (r, c) == STRIPE_BLOCK or not vis.contains(l0_x, l0_y):
                continue
            got = _pixel(image, l0_x, l0_y, view)
            assert max(abs(a - b) for a, b in zip(got, colour, strict=True)) <= 16, f"block ({r}, {c}) shows {got}, expected {colour}"
            checked += 1
    assert checked >= 4
    return image


def _level_keys(view, level):
    lv = view.shared.pyramid[level]
    grid = TileGrid(lv.lv_width, lv.lv_height, view.loader.tile)
    return [TileKey(view.shared.slide_id, level, c, r) for r in range(grid.rows) for c in range(grid.cols)]


def test_zoomed_out_single_level_slide_paints_virtual_tiles_in_the_right_colours(qtbot, slide_view, single_level_slide_path):
    shared = SharedSource(open_slide(single_level_slide_path))
    assert shared.source.level_count == 1 and len(shared.pyramid) == 3
    slide_view.set_slide(shared)  # fitted: 4096 px in 800 -> downsample 5.12 -> the ds-4 virtual level
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=20_000)
    assert slide_view.target_level() == 2 and shared.pyramid[2].is_virtual
    assert all(key in slide_view.cache for key in _level_keys(slide_view, 2))  # pinned: all of it
    # Level 0 was never read: the UI thread paints 1024-px virtual tiles, not 16x as many pixels.
    assert not any(key in slide_view.cache for key in _level_keys(slide_view, 0))
    image = _assert_block_colours(slide_view)
    stripes = _pixel(image, STRIPE_BLOCK[1] * BLOCK + 301, STRIPE_BLOCK[0] * BLOCK + 300, slide_view)
    assert all(100 < v < 155 for v in stripes), f"2-px stripes averaged over 4x4 blocks are grey, got {stripes}"


def test_virtual_tiles_still_loading_are_painted_from_the_coarser_virtual_level(qtbot, slide_view, single_level_slide_path):
    shared = SharedSource(open_slide(single_level_slide_path))
    slide_view.set_slide(shared)
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=20_000)
    slide_view.viewport.set_scale(0.3)  # downsample 3.3 -> the ds-2 virtual level
    slide_view.center_on(2048, 1300)  # four block centres in view
    # No events processed yet: no ds-2 tile can have arrived, so the pinned ds-4 level paints.
    assert slide_view.target_level() == 1 and slide_view.missing_visible_tiles()
    _assert_block_colours(slide_view)
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=20_000)
    _assert_block_colours(slide_view)
    assert not any(key in slide_view.cache for key in _level_keys(slide_view, 0))
