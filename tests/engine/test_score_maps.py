"""engine.annotations.score: map mass inside annotated outlines, against a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.annotations import Annotation, AnnotationError, AnnotationSet, save_annotations
from engine.annotations.score import score_cohort, score_maps
from engine.io.maps import MapLayer, write_maps

# A 4 x 4 map of 10 x 10 level-0 px cells at (100, 200): cell (r, c) holds 4 r + c.
BOX = (100.0, 200.0, 140.0, 240.0)
VALUES = np.arange(16, dtype=np.float32).reshape(4, 4)


def _maps(tmp_path, name="a", values=VALUES, prediction=None):
    layers = {"saliency": MapLayer(values, BOX)}
    if prediction is not None:
        layers["prediction"] = MapLayer(prediction, BOX)
    out = tmp_path / name
    write_maps(out, layers, slide_path="slide.svs", classes=("normal", "tumour"), prediction=None)
    return out / "maps.npz"


def _square(x0, y0, x1, y1, cls="Tumor") -> Annotation:
    return Annotation.rectangles(np.array([[x0, y0, x1, y1]], float), class_name=cls)[0]


@pytest.fixture
def outlines() -> AnnotationSet:
    # The top-left 2 x 2 cells (values 0, 1, 4, 5), and a "Other" square that must not count.
    return AnnotationSet([_square(100, 200, 120, 220), _square(130, 230, 140, 240, "Other")])


def test_hand_computed_scores(tmp_path, outlines):
    result = score_maps(_maps(tmp_path), outlines, "Tumor")
    assert result["mass_inside"] == pytest.approx(10 / 120)  # (0 + 1 + 4 + 5) / sum(0..15)
    assert result["even_share"] == pytest.approx(4 / 16)
    # Positives {0, 1, 4, 5} against 12 negatives {2, 3, 6..15}: only 4 > 2, 3 and 5 > 2, 3 win.
    assert result["pixel_auc"] == pytest.approx(4 / 48)
    assert (result["cells"], result["cells_inside"], result["over"]) == (16, 4, "computed cells")
    every = score_maps(_maps(tmp_path), outlines, None)  # both classes: 0, 1, 4, 5 and 15
    assert every["mass_inside"] == pytest.approx(25 / 120) and every["even_share"] == pytest.approx(5 / 16)


def test_nan_cells_and_non_tissue_cells_are_left_out(tmp_path, outlines):
    values = VALUES.copy()
    values[3, :] = np.nan  # not computed (outside the run's region)
    tissue = np.ones((4, 4), bool)
    tissue[:, 3] = False
    from engine.annotations.score import map_plane, score_plane
    from engine.io.maps import read_maps
    plane, grid = map_plane(*read_maps(_maps(tmp_path, values=values)), "saliency", None)
    result = score_plane(plane, grid, outlines, "Tumor", tissue=tissue)
    kept = [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert result["cells"] == 9 and result["over"] == "tissue"
    assert result["mass_inside"] == pytest.approx(10 / sum(kept))
    assert result["even_share"] == pytest.approx(4 / 9)


def test_prediction_layer_takes_a_class_and_cohort_means(tmp_path, outlines):
    pred = np.stack([1 - VALUES / 15, VALUES / 15]).astype(np.float32)
    path = _maps(tmp_path, prediction=pred)
    tumour = score_maps(path, outlines, "Tumor", layer="prediction")  # default: the last class
    assert tumour["mass_inside"] == pytest.approx(10 / 120)
    assert score_maps(path, outlines, "Tumor", layer="prediction", channel="tumour") == tumour
    normal = score_maps(path, outlines, "Tumor", layer="prediction", channel=0)
    assert normal["mass_inside"] == pytest.approx((4 - 10 / 15) / (16 - 120 / 15))
    with pytest.raises(AnnotationError, match="no 'attention' layer"):
        score_maps(path, outlines, "Tumor", layer="attention")

    save_annotations(outlines, tmp_path / "a.geojson")
    _maps(tmp_path, "b", values=VALUES[::-1].copy())  # rows flipped: the square holds 8, 9, 12, 13
    (tmp_path / "cohort.csv").write_text("slide,maps,annotations\ns1,a/maps.npz,a.geojson\n"
                                         "s2,b/maps.npz,a.geojson\n")
    cohort = score_cohort(tmp_path / "cohort.csv", "Tumor")
    assert [s["slide"] for s in cohort["slides"]] == ["s1", "s2"] and cohort["n"] == 2
    assert cohort["slides"][1]["mass_inside"] == pytest.approx(42 / 120)
    assert cohort["mean"]["mass_inside"] == pytest.approx((10 / 120 + 42 / 120) / 2)
    assert not math.isnan(cohort["mean"]["pixel_auc"])
