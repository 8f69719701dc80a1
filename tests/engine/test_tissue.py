"""The tissue detector: thresholds, holes, specks, and the mask carried onto a map grid."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import SpecError
from engine.geometry import Box, MapGeometry
from engine.slides import open_slide
from engine.slides.tissue import (
    TissueParams,
    coverage_on_grid,
    detect_tissue,
    detect_tissue_rgb,
    fill_holes,
    label_components,
    otsu_threshold,
    remove_small,
)


def _slide_like(h=200, w=300):
    """Glass (near-white, grey) with a pink section holding a lumen, and a speck of dust."""
    rng = np.random.default_rng(0)
    rgb = np.full((h, w, 3), 242, np.int16) + rng.integers(-3, 4, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    section = ((yy - 100) / 70.0) ** 2 + ((xx - 120) / 90.0) ** 2 <= 1
    rgb[section] = (220, 140, 190)
    lumen = ((yy - 100) ** 2 + (xx - 120) ** 2) <= 5 ** 2  # 81 px: a hole to fill
    rgb[lumen] = 243
    rgb[20:22, 270:272] = (200, 120, 170)  # a 4-px speck
    return np.clip(rgb, 0, 255).astype(np.uint8), section


def test_label_components_counts_four_connected_pieces():
    mask = np.zeros((6, 8), bool)
    mask[0:2, 0:2] = True          # 4 px
    mask[2, 2] = True              # diagonal only: its own component
    mask[3:6, 5] = True            # 3 px column
    mask[5, 5:8] = True            # joined to the column: 3 + 2 px
    labels, sizes = label_components(mask)
    assert labels.max() == 3
    assert sorted(sizes[1:].tolist()) == [1, 4, 5]
    assert (labels > 0).sum() == mask.sum() and not labels[~mask].any()
    assert len(np.unique(labels[3:6, 5])) == 1 and labels[5, 7] == labels[3, 5]


def test_label_components_joins_u_shapes_through_a_later_row():
    mask = np.zeros((4, 5), bool)
    mask[0:3, 0] = mask[0:3, 4] = True
    mask[3, :] = True
    labels, sizes = label_components(mask)
    assert labels.max() == 1 and sizes[1] == mask.sum()


def test_fill_holes_fills_small_enclosed_background_only():
    mask = np.zeros((10, 10), bool)
    mask[1:9, 1:9] = True
    mask[4:6, 4:6] = False         # an enclosed 4-px hole
    mask[0:3, 0:2] = False         # background touching the border is never a hole
    filled = fill_holes(mask, max_size=4)
    assert filled[4:6, 4:6].all() and not filled[0, 0]
    assert not fill_holes(mask, max_size=3)[4:6, 4:6].any()


def test_remove_small_drops_specks():
    mask = np.zeros((10, 10), bool)
    mask[0:5, 0:5] = True
    mask[8, 8] = True
    cleaned = remove_small(mask, min_size=2)
    assert cleaned[0:5, 0:5].all() and not cleaned[8, 8]


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(500, 10, np.uint8), np.full(300, 90, np.uint8)])
    assert 10 <= otsu_threshold(values) < 90


def test_detector_finds_the_section_fills_its_lumen_and_drops_the_speck():
    rgb, section = _slide_like()
    mask = detect_tissue_rgb(rgb, TissueParams(max_hole_fraction=0.005, min_speck_fraction=0.0005))
    assert mask[100, 120]                           # the lumen is filled
    assert not mask[20:22, 270:272].any()           # the speck is gone
    agree = (mask == section).mean()
    assert agree > 0.995


def test_a_blank_slide_has_no_tissue():
    rgb = np.full((64, 64, 3), 240, np.uint8)
    assert not detect_tissue_rgb(rgb).any()


def test_bad_params_are_spec_errors():
    with pytest.raises(SpecError, match="tissue method"):
        TissueParams(method="magic")
    with pytest.raises(SpecError, match="max_hole_fraction"):
        TissueParams(max_hole_fraction=1.5)


def test_coverage_on_grid_weights_areas_exactly():
    th = np.zeros((4, 4), bool)
    th[:, :2] = True                                # left half of a 400 x 400 level-0 slide
    grid = MapGeometry(Box(100, 0, 400, 400), (2, 3))  # cells 100 px wide from x=100
    cov = coverage_on_grid(th, Box(0, 0, 400, 400), grid)
    np.testing.assert_allclose(cov, [[1.0, 0.0, 0.0]] * 2)
    grid = MapGeometry(Box(0, 0, 400, 400), (1, 3))   # cells 133.3 px wide: the middle one is half tissue
    np.testing.assert_allclose(coverage_on_grid(th, Box(0, 0, 400, 400), grid)[0], [1.0, 0.5, 0.0])


def test_detect_tissue_on_a_slide_file(tmp_path):
    from engine.io.svs import write_svs_array

    rgb, section = _slide_like(256, 384)
    path = tmp_path / "section.svs"
    write_svs_array(path, rgb, mpp=0.5, app_mag=20.0, tile=64)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, TissueParams(thumb_px=384))
    assert tissue.l0_box == Box(0, 0, 384, 256)
    assert abs(tissue.fraction - section.mean()) < 0.02
    on_cells = tissue.on_grid(MapGeometry(Box(0, 0, 384, 256), (8, 12)), min_fraction=0.5)
    assert on_cells[4, 3] and not on_cells[0, 11]
