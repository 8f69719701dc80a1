"""engine.slides and engine.io.svs: opening, reading, validation, bad input, reopen-once."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from engine.errors import RegionError, SlideError, SlideOpenError, SlideReadError
from engine.geometry import Box
from engine.io.svs import default_downsamples, write_svs
from engine.slides import SLIDE_SUFFIXES, ArraySlide, level_region, open_slide, to_rgb
from tests.conftest import BLOCK, SYNTH_L0_SIZE, block_colour


def _close(a, b, tol=14):
    return np.abs(np.asarray(a[:3], int) - np.asarray(b[:3], int)).max() <= tol


def test_svs_writer_makes_an_aperio_slide_with_metadata(synthetic_slide_path):
    with open_slide(synthetic_slide_path) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == SYNTH_L0_SIZE
        assert slide.level_count == 3
        assert slide.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
        assert slide.level_downsamples == pytest.approx((1, 4, 16))
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.objective_power == 40
        assert set(slide.associated_image_names) == {"label", "macro", "thumbnail"}
        assert slide.properties["aperio.AppMag"] == "40"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_read_region_returns_known_colours_at_every_level(synthetic_slide_path, level):
    with open_slide(synthetic_slide_path) as slide:
        ds = slide.level_downsamples[level]
        for l0_x, l0_y in [(100, 100), (1500, 600), (3000, 2500), (3900, 200)]:
            region = slide.read_region(l0_x, l0_y, level, 4, 4)
            assert region.shape == (4, 4, 4) and region.dtype == np.uint8
            assert _close(region[2, 2], block_colour(l0_x + 2 * ds, l0_y + 2 * ds)), (level, l0_x, l0_y, region[2, 2])


def test_stripes_are_sharp_at_level_0_and_grey_when_coarse(synthetic_slide_path):
    with open_slide(synthetic_slide_path) as slide:
        l0_x, l0_y = 3 * BLOCK + 64, BLOCK + 64
        fine = to_rgb(slide.read_region(l0_x, l0_y, 0, 32, 1))[0]
        assert fine[:, 0].min() < 50 and fine[:, 0].max() > 205
        coarse = to_rgb(slide.read_region(l0_x, l0_y, 1, 8, 1))[0]
        assert np.all(np.abs(coarse.astype(int) - 128) < 20)


def test_associated_images_and_thumbnail(synthetic_slide_path):
    with open_slide(synthetic_slide_path) as slide:
        label = slide.associated_image("label")
        assert label.shape == (120, 200, 4) and _close(label[60, 100], (10, 90, 160))
        thumb = slide.thumbnail(256)
        assert thumb.shape == (192, 256, 3)
        assert _close(thumb[10, 10], block_colour(10 * 16, 10 * 16))
        assert _close(thumb[150, 200], block_colour(200 * 16, 150 * 16))
        with pytest.raises(SlideReadError, match="no associated image named 'nope'"):
            slide.associated_image("nope")


@pytest.mark.parametrize(
    "args, message",
    [
        ((0.5, 0, 0, 10, 10), "l0_x must be an integer"),
        ((0, 0, 3, 10, 10), "level 3 does not exist"),
        ((0, 0, -1, 10, 10), "level -1 does not exist"),
        ((-1, 0, 0, 10, 10), "outside level 0"),
        ((4090, 0, 0, 10, 10), "outside level 0"),
        ((0, 3040, 1, 10, 10), "outside level 1"),
        ((0, 0, 0, 0, 10), "must be positive"),
        ((0, 0, 0, 4096, 3072), "over the"),
    ],
)
def test_read_region_validates_instead_of_returning_blank(synthetic_slide_path, args, message):
    with open_slide(synthetic_slide_path, max_region_bytes=32 * 2**20) as slide:
        with pytest.raises(RegionError, match=message):
            slide.read_region(*args)


def test_last_tile_of_a_rounded_level_is_in_bounds(tmp_path):
    # 1001 px at 4x is 251 px: the last level pixel starts at l0 1000.x, not past the edge.
    rgb = np.full((1001, 1001, 3), 77, np.uint8)
    path = write_svs(tmp_path / "odd.svs", (1001, 1001), lambda ds, box: np.full((int(box.height), int(box.width), 3), 77, np.uint8), downsamples=(1, 4))
    with open_slide(path) as slide:
        lv_w, lv_h = slide.level_dimensions[1]
        ds = slide.level_downsamples[1]
        region = slide.read_region(round(200 * ds), round(200 * ds), 1, lv_w - 200, lv_h - 200)
        assert _close(region[-1, -1], rgb[0, 0])


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "not a slide OpenSlide can read"),
    ("random", "not a slide OpenSlide can read"),
    ("empty", "empty"),
    ("directory", "is a folder"),
    ("missing", "no such file"),
    ("text_png", "not an image"),
])
def test_bad_files_raise_slide_open_error_naming_the_file(bad_files, kind, reason):
    path = bad_files[kind]
    with pytest.raises(SlideOpenError, match=reason) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_truncated_plain_image_is_an_error_not_a_partial_image(tmp_path):
    from PIL import Image

    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(SlideOpenError, match="cut.png"):
        open_slide(cut)


def test_plain_png_opens_as_array_slide_with_levels(tmp_path):
    from PIL import Image

    rgb = np.zeros((2100, 3000, 3), np.uint8)
    rgb[:, 1500:] = (10, 200, 30)
    path = tmp_path / "plain.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path) as slide:
        assert isinstance(slide, ArraySlide) and slide.vendor == "image" and slide.mpp is None
        assert slide.level_count >= 2 and slide.level_dimensions[0] == (3000, 2100)
        coarsest = slide.level_count - 1
        ds = slide.level_downsamples[coarsest]
        assert _close(slide.read_region(2800, 100, coarsest, 1, 1)[0, 0], (10, 200, 30))
        assert slide.read_region(int(100 * ds), 100, coarsest, 1, 1)[0, 0, 1] == 0


def test_corrupt_tile_reopens_once_then_reports_and_good_regions_stay_readable(corrupt_tile_slide):
    with open_slide(corrupt_tile_slide) as slide:
        assert slide.read_region(0, 0, 0, 64, 64)[5, 5, 3] == 255
        with pytest.raises(SlideReadError, match="corrupt there") as info:
            slide.read_region(256 + 10, 256 + 10, 0, 16, 16)
        assert str(corrupt_tile_slide) in str(info.value)
        assert slide.reopen_count == 1  # one fresh handle tried before reporting
        # The retry poisoned the fresh handle; the next good read reopens and succeeds.
        assert slide.read_region(0, 0, 0, 64, 64)[5, 5, 3] == 255
        assert slide.reopen_count == 2


def test_a_file_that_keeps_failing_is_given_up_on(corrupt_tile_slide, monkeypatch):
    import engine.slides.openslide_source

    monkeypatch.setattr(engine.slides.openslide_source, "MAX_REOPENS", 2)
    with open_slide(corrupt_tile_slide) as slide:
        for _ in range(2):
            with pytest.raises(SlideReadError, match="corrupt there"):
                slide.read_region(266, 266, 0, 16, 16)
        with pytest.raises(SlideReadError, match="giving up"):
            slide.read_region(266, 266, 0, 16, 16)
        with pytest.raises(SlideReadError, match="giving up"):
            slide.read_region(0, 0, 0, 16, 16)  # final, without touching the file again


def test_a_sticky_error_on_a_good_region_is_cured_by_the_reopen(corrupt_tile_slide):
    import openslide

    with open_slide(corrupt_tile_slide) as slide:
        with pytest.raises(openslide.OpenSlideError):
            slide._handle.read_region((266, 266), 0, (16, 16))  # poison the handle behind its back
        # The next good read fails on the poisoned handle, reopens, and succeeds.
        assert slide.read_region(0, 0, 0, 8, 8)[4, 4, 3] == 255
        assert slide.reopen_count == 1


def test_reads_after_close_raise_slide_read_error(synthetic_slide_path):
    slide = open_slide(synthetic_slide_path)
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_region(0, 0, 0, 4, 4)


def test_parallel_readers_get_the_same_pixels(synthetic_slide_path):
    with open_slide(synthetic_slide_path) as slide:
        expected = slide.read_region(512, 512, 0, 256, 256)
        results, errors = [], []

        def reader():
            try:
                for _ in range(20):
                    results.append(np.array_equal(slide.read_region(512, 512, 0, 256, 256), expected))
            except SlideError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 60 and all(results)


def test_array_slide_matches_the_interface():
    rgb = np.zeros((600, 800, 3), np.uint8)
    rgb[300:, :] = 200
    slide = ArraySlide(rgb, mpp=0.5, build_levels=True, min_size=256)
    assert slide.mpp == (0.5, 0.5) and slide.level_dimensions[1] == (400, 300)
    assert slide.get_best_level_for_downsample(3.0) == 1
    assert slide.get_best_level_for_downsample(0.5) == 0
    assert slide.read_region(0, 400, 1, 2, 2)[0, 0, 0] == 200
    with pytest.raises(RegionError):
        slide.read_region(0, 0, 5, 2, 2)
    with pytest.raises(SlideOpenError):
        ArraySlide(np.zeros((4, 4), np.float32))


def test_default_downsamples_stop_at_a_small_coarsest_level():
    assert default_downsamples(40_000, 40_000) == (1, 4, 16, 64)
    assert default_downsamples(800, 600) == (1,)


def test_real_slide_opens_and_reads(real_slide_path):
    with open_slide(real_slide_path) as slide:
        assert slide.vendor == "aperio" and slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx((0.499, 0.499), abs=1e-3)
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_image_names)
        tissue = to_rgb(slide.read_region(1000, 1000, 0, 64, 64))
        assert tissue.std() > 5  # real texture, not a blank fill


def test_the_slide_suffixes_include_every_format_open_slide_routes():
    from engine.slides.opening import PLAIN_IMAGE_SUFFIXES, TIFF_SUFFIXES

    assert len(set(SLIDE_SUFFIXES)) == len(SLIDE_SUFFIXES) and all(s == s.lower() for s in SLIDE_SUFFIXES)
    assert PLAIN_IMAGE_SUFFIXES | TIFF_SUFFIXES <= set(SLIDE_SUFFIXES)
    assert {".svs", ".ndpi", ".mrxs", ".scn", ".dcm"} <= set(SLIDE_SUFFIXES)


def test_a_level_region_covers_its_level0_box_and_stays_inside_the_level():
    slide = ArraySlide(np.zeros((1001, 803, 3), np.uint8), build_levels=True, min_size=64)
    ds = slide.level_downsamples[2]  # about 4, not exactly: level sizes are rounded
    lv_w, lv_h = slide.level_dimensions[2]
    region = level_region(slide, 2, (13, 7, 700, 1001))
    assert region.lv_box == Box(math.floor(13 / ds), math.floor(7 / ds), math.ceil(700 / ds), min(lv_h, math.ceil(1001 / ds)))
    assert region.lv_box.x1 < lv_w and region.l0_box.x0 <= 13 and region.l0_box.y0 <= 7 and region.l0_box.x1 >= 700
    assert level_region(slide, 0, Box(-50, -50, 10, 20)).lv_box == Box(0, 0, 10, 20)  # clipped to the level
    with pytest.raises(RegionError, match=r"the region \(900, 0, 950, 10\) \(level 0\) lies outside"):
        level_region(slide, 0, (900, 0, 950, 10))
    with pytest.raises(RegionError, match="level 7 does not exist"):
        level_region(slide, 7, (0, 0, 10, 10))
