"""engine.io.heatmap_tiff: heatmaps registered to the whole slide, read back by tifffile and OpenSlide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from engine.io.heatmap_tiff import registered_levels, write_registered_heatmaps
from engine.io.maps import MapLayer

CELL = 32.0  # level-0 px per map cell
SLIDE = (20000, 12000)
MPP = 0.25


@pytest.fixture
def written(tmp_path):
    v = np.full((12, 20), np.nan, np.float32)
    v[0:6, 2:9] = 0.5
    v[6:12, 10:18] = 1.0
    v[0, 0] = 0.25
    # The map covers only a box inside the slide (a tissue box), on the heatmap's own cell grid.
    box = (1600.0, 768.0, 1600 + 20 * CELL, 768 + 12 * CELL)
    return v, box, write_registered_heatmaps(tmp_path, {"saliency": MapLayer(v, box)}, SLIDE, MPP)


def _l0_to_px(l0_x: float, l0_y: float, downsample: int) -> tuple[int, int]:
    return int(l0_y // (CELL * downsample)), int(l0_x // (CELL * downsample))


def test_float_pyramid_spans_the_slide_and_gives_the_map_value_at_level0_positions(written):
    v, box, paths = written
    assert set(paths) == {"saliency_heatmap_tiff", "saliency_values_tiff"}
    with tifffile.TiffFile(paths["saliency_values_tiff"]) as tif:
        pages = list(tif.pages)
        assert [(p.shape[1], p.shape[0]) for p in pages] == [(w, h) for _, w, h in registered_levels(SLIDE, (CELL, CELL))]
        assert (pages[0].shape[1], pages[0].shape[0]) == (math.ceil(SLIDE[0] / CELL), math.ceil(SLIDE[1] / CELL))
        assert [p.subfiletype for p in pages] == [0] + [1] * (len(pages) - 1) and len(pages) >= 3
        for k, page in enumerate(pages[:2]):
            ds = 2**k
            num, den = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            assert num / den == pytest.approx(1e4 / (MPP * CELL * ds))
            plane = page.asarray()
            assert plane.dtype == np.float32
            # Level-0 points inside the map's cells (a cell's centre, so every level's pixel sampling it agrees).
            for r, c in ((2, 5), (8, 12), (0, 0)):
                l0_x, l0_y = box[0] + (c + 0.5) * CELL, box[1] + (r + 0.5) * CELL
                if ds == 2 and (r, c) == (0, 0):
                    continue  # a lone cell: the coarser pixel's centre may fall on its neighbour
                assert plane[_l0_to_px(l0_x, l0_y, ds)] == v[r, c]
            assert np.isnan(plane[_l0_to_px(100, 100, ds)])  # off the map: NaN
            assert np.isnan(plane[_l0_to_px(box[0] + 1.5 * CELL, box[1] + 11.5 * CELL, ds)])  # NaN cell stays NaN


def test_rgba_pyramid_opens_in_openslide_with_halving_levels_and_transparency(written):
    openslide = pytest.importorskip("openslide")
    v, box, paths = written
    with openslide.OpenSlide(paths["saliency_heatmap_tiff"]) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions[0] == (math.ceil(SLIDE[0] / CELL), math.ceil(SLIDE[1] / CELL))
        assert [round(d) for d in slide.level_downsamples[:3]] == [1, 2, 4]
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP * CELL)
        # Blob interiors: OpenSlide places a coarser level by its measured downsample (~1.996), so a
        # read there may blend a pixel with its neighbours.
        hot = _l0_to_px(box[0] + 14 * CELL, box[1] + 8.5 * CELL, 1)[::-1]
        warm = _l0_to_px(box[0] + 5 * CELL, box[1] + 2.5 * CELL, 1)[::-1]
        for level in (0, 1):
            px_hot = np.asarray(slide.read_region(hot, level, (1, 1)))[0, 0]
            px_warm = np.asarray(slide.read_region(warm, level, (1, 1)))[0, 0]
            px_off = np.asarray(slide.read_region((3, 3), level, (1, 1)))[0, 0]
            assert px_hot[3] == 255 and px_warm[3] == 255 and px_off[3] == 0
            assert tuple(px_hot[:3]) != tuple(px_warm[:3])  # 1.0 and 0.5 on viridis
    with tifffile.TiffFile(paths["saliency_heatmap_tiff"]) as tif:
        rgba = tif.pages[0].asarray()
        from engine.colormaps import lut_rgba
        assert tuple(rgba[_l0_to_px(box[0] + 12.5 * CELL, box[1] + 8.5 * CELL, 1)]) == tuple(lut_rgba("viridis")[255])


def test_prediction_layers_split_per_class(tmp_path):
    v = np.stack([np.full((4, 4), 0.2, np.float32), np.full((4, 4), 0.8, np.float32)])
    paths = write_registered_heatmaps(tmp_path, {"prediction": MapLayer(v, (0.0, 0.0, 256.0, 256.0))}, (256, 256),
                                      None, classes=("normal", "tumour"))
    assert set(paths) == {f"prediction_{c}_{k}_tiff" for c in ("normal", "tumour") for k in ("heatmap", "values")}
    with tifffile.TiffFile(paths["prediction_tumour_values_tiff"]) as tif:
        assert len(tif.pages) == 1 and np.all(tif.pages[0].asarray() == np.float32(0.8))
        assert "XResolution" not in tif.pages[0].tags or tif.pages[0].tags["ResolutionUnit"].value != 3


def test_write_maps_writes_registered_heatmaps_read_back_at_level0_positions(tmp_path):
    """A job's result (engine.io.maps.write_maps) carries the registered pyramids, not a TIFF of
    the map box alone: the slide's size comes from its header, the map's cells land at their
    level-0 place at two levels, in tifffile (float values) and in OpenSlide (RGBA)."""
    openslide = pytest.importorskip("openslide")
    from model_fixtures import write_test_slide

    from engine.io.maps import read_maps, write_maps
    from engine.slides import open_slide

    slide = write_test_slide(tmp_path / "slide.svs")
    with open_slide(slide) as s:
        size = tuple(s.dimensions)
    cell = 2.0  # a 1024 x 768 slide: a 512 x 384 heatmap, so it has a second level (downsample 2)
    h, w = 250, 300
    v = np.full((h, w), np.nan, np.float32)
    v[20:100, 30:150] = 0.75
    v[150:220, 180:280] = 0.25
    box = (256.0, 128.0, 256.0 + w * cell, 128.0 + h * cell)
    written = write_maps(tmp_path / "out", {"saliency": MapLayer(v, box)}, slide_path=str(slide), classes=(),
                         prediction=None, slide_mpp=0.5)
    _, meta = read_maps(written["maps_npz"])
    assert meta["heatmaps"] == {"l0_size": list(size), "spans": "slide"}
    assert meta["files"]["saliency.values.tif"] == {"layer": "saliency", "class": None, "kind": "values"}
    points = {(256 + 90.5 * cell, 128 + 60.5 * cell): 0.75, (256 + 230.5 * cell, 128 + 185.5 * cell): 0.25}
    with tifffile.TiffFile(written["saliency_values_tiff"]) as tif:
        assert (tif.pages[0].shape[1], tif.pages[0].shape[0]) == (math.ceil(size[0] / cell), math.ceil(size[1] / cell))
        assert len(tif.pages) >= 2
        for k in (0, 1):
            plane = tif.pages[k].asarray()
            for (l0_x, l0_y), value in points.items():
                assert plane[int(l0_y // (cell * 2**k)), int(l0_x // (cell * 2**k))] == np.float32(value)
            assert np.isnan(plane[0, 0])  # the slide's corner, outside the map: nothing computed
    from engine.colormaps import lut_rgba

    with openslide.OpenSlide(written["saliency_heatmap_tiff"]) as heat:
        assert float(heat.properties["openslide.mpp-x"]) == pytest.approx(0.5 * cell)
        for level in (0, 1):
            ds = heat.level_downsamples[level]
            colours = []
            for l0_x, l0_y in points:
                # read_region takes level-0 coordinates of the heatmap: the slide's level-0 px / cell
                px = np.asarray(heat.read_region((int(l0_x // cell), int(l0_y // cell)), level, (1, 1)))[0, 0]
                assert px[3] == 255, (level, ds)
                colours.append(tuple(px[:3]))
            assert colours[0] == tuple(lut_rgba("viridis")[255][:3])  # 0.75 is the map's maximum
            assert colours[0] != colours[1]
            assert np.asarray(heat.read_region((0, 0), level, (1, 1)))[0, 0, 3] == 0
