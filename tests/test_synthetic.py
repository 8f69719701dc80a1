"""The synthetic slide generator: deterministic, readable by OpenSlide, lesions only in positives."""

from __future__ import annotations

import json

import numpy as np

from engine.slides import open_slide, to_rgb
from engine.synthetic import SlideRecipe, write_synthetic_slide


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
