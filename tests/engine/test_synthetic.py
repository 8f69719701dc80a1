"""The synthetic slide generator: deterministic, readable by OpenSlide, lesions only in positives."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from engine.demo.synthetic import SlideRecipe, write_synthetic_slide
from engine.slides import open_slide, to_rgb


def _pixels(path):
    with open_slide(path) as s:
        return s.vendor, s.mpp, to_rgb(s.read_region(0, 0, 0, *s.dimensions))


def test_same_seed_same_pixels_and_positives_have_lesions(tmp_path):
    recipe = SlideRecipe(seed=7, size=(768, 640), positive=True, lesions=2, lesion_radius_um=40)
    a = write_synthetic_slide(tmp_path / "a.svs", recipe)
    b = write_synthetic_slide(tmp_path / "b.svs", recipe)
    vendor, mpp, pa = _pixels(tmp_path / "a.svs")
    _, _, pb = _pixels(tmp_path / "b.svs")
    assert vendor == "aperio" and mpp == (0.5, 0.5)
    assert np.array_equal(pa, pb) and a["lesions"] == b["lesions"] and len(a["lesions"]) == 2
    mask = np.load(tmp_path / "a.mask.npz")["mask"]
    assert mask.any()
    # Lesion cells are darker than the surrounding tissue: the mask marks dark places.
    cell = int(np.load(tmp_path / "a.mask.npz")["cell"])
    grey = pa.mean(axis=2)
    lesion_px = grey[::cell, ::cell][: mask.shape[0], : mask.shape[1]][mask]
    assert lesion_px.mean() < grey.mean() - 20
    assert json.loads((tmp_path / "a.json").read_text())["label"] == 1


def test_negative_slides_have_no_lesions_and_differ_by_seed(tmp_path):
    info = write_synthetic_slide(tmp_path / "n.svs", SlideRecipe(seed=1, size=(512, 512)))
    write_synthetic_slide(tmp_path / "m.svs", SlideRecipe(seed=2, size=(512, 512)))
    assert info["lesions"] == [] and info["label"] == 0
    assert not np.load(tmp_path / "n.mask.npz")["mask"].any()
    assert not np.array_equal(_pixels(tmp_path / "n.svs")[2], _pixels(tmp_path / "m.svs")[2])


def test_vesicular_lesions_vanish_when_averaged_to_a_few_microns_per_pixel(tmp_path):
    """The resolution study's lesions: plain at 0.5 µm/px (rim pixels darker than any normal
    nucleus, after the SVS's JPEG too), but at 4 µm/px (the 8x level, a box average) the same mean colour and the same
    spread as the tissue around them."""
    from engine.demo.data import resolution_recipe
    from engine.demo.synthetic import Scene

    recipe = dataclasses.replace(resolution_recipe(11, True), size=(1024, 1024), lesions=1, lesion_radius_um=130.0)
    write_synthetic_slide(tmp_path / "v.svs", recipe, downsamples=(1, 2, 4, 8))
    scene = Scene(recipe)
    (lesion,) = scene.lesions
    with open_slide(tmp_path / "v.svs") as s:
        levels = {s.level_downsamples[i]: to_rgb(s.read_region(0, 0, i, *s.level_dimensions[i])).astype(float)
                  for i in range(s.level_count)}
    for ds in (1, 8):
        rgb = levels[ds]
        centre = (np.arange(rgb.shape[0]) + 0.5) * ds
        y, x = centre[:, None], centre[None, :]
        # Whole pixels: their whole footprint in tissue, and inside or clear of the lesion.
        tissue = scene._tissue_at(y - ds / 2, x - ds / 2) & scene._tissue_at(y + ds / 2, x + ds / 2)
        dist = np.hypot(x - lesion.l0_x, y - lesion.l0_y)
        inside, outside = tissue & (dist < lesion.l0_radius - ds), tissue & (dist > lesion.l0_radius + 4 * ds)
        assert inside.sum() > 100 and outside.sum() > 100
        grey = rgb.mean(-1)
        grey_in, grey_out = grey[inside].std(), grey[outside].std()
        darker_than_nuclei = grey < 80  # a normal nucleus is 100 (95, 55, 150); a rim 71
        if ds == 1:  # dark rims: pixels darker than any normal nucleus, and a wider spread
            assert darker_than_nuclei[inside].mean() > 0.02 and not darker_than_nuclei[outside].any()
            assert grey_in > 1.1 * grey_out
        else:
            assert darker_than_nuclei[inside].mean() < 0.002
            np.testing.assert_allclose(rgb[inside].mean(0), rgb[outside].mean(0), atol=3)
            assert abs(grey_in / grey_out - 1) < 0.1, (grey_in, grey_out)


def test_regression_slides_hold_their_target_only_at_high_resolution(tmp_path):
    """The regression cohort: two slides of the same tissue, one with few and one with many
    scattered vesicular nuclei. At 0.5 µm/px the rims (darker than any normal nucleus) count the
    target; at 4 µm/px (the 8x box average) the two tissues match in mean colour."""
    from engine.demo.data import regression_recipe
    from engine.demo.synthetic import Scene

    base = dataclasses.replace(regression_recipe(5), size=(1024, 1024))
    few, many = (dataclasses.replace(base, scattered_vesicular_fraction=f) for f in (0.02, 0.5))
    assert Scene(many).vesicular_in_tissue() > 10 * max(1, Scene(few).vesicular_in_tissue())
    assert Scene(dataclasses.replace(base, scattered_vesicular_fraction=0.0)).vesicular_in_tissue() == 0
    pixels = {}
    for name, recipe in (("few", few), ("many", many)):
        write_synthetic_slide(tmp_path / f"{name}.svs", recipe, downsamples=(1, 2, 4, 8))
        with open_slide(tmp_path / f"{name}.svs") as s:
            pixels[name] = {s.level_downsamples[i]: to_rgb(s.read_region(0, 0, i, *s.level_dimensions[i])).astype(float)
                            for i in (0, s.level_count - 1)}
    scene = Scene(base)  # same tissue field in both: the share changes only which nuclei are vesicular
    for ds in (1, 8):
        centre = (np.arange(pixels["few"][ds].shape[0]) + 0.5) * ds
        y, x = centre[:, None], centre[None, :]
        tissue = scene._tissue_at(y - ds / 2, x - ds / 2) & scene._tissue_at(y + ds / 2, x + ds / 2)
        rims = {name: (p[ds].mean(-1)[tissue] < 80).mean() for name, p in pixels.items()}
        if ds == 1:
            assert rims["many"] > 10 * rims["few"] and rims["many"] > 0.01
        else:
            np.testing.assert_allclose(pixels["few"][ds][tissue].mean(0), pixels["many"][ds][tissue].mean(0), atol=3)
