"""Inference with the tissue mask: on a slide whose left half is tissue and right half glass,
glass cells are NaN and their blocks never run, the slide-level pool takes the tissue cells only,
the mask is emitted and written as the layer "tissue", and a run without the mask is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from model_fixtures import CLASSES, green_detector
from tissue_fixtures import SIZE, STRIDE, TISSUE_X1, WHOLE, region_input, tissue_keep, write_half_tissue_slide

from engine.annotations import Annotation, AnnotationSet
from engine.api import run_inference
from engine.errors import SpecError
from engine.events import MapPatch, Progress
from engine.geometry import Box
from engine.infer_masks import tissue_mask_setting
from engine.io.checkpoints import ModelCard, save_checkpoint
from engine.io.maps import read_maps
from engine.specs import InferenceSpec
from engine.streaming import StreamingModule


def save_detector(directory, pool: str):
    net = green_detector()
    net.pool = pool  # the hand-set weights do not depend on the pool
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", pool=pool, model_kwargs={"width": 4},
                     input_mpp=0.5, tile_size=128, provenance={"made_by": "tests/engine/test_infer_tissue.py"})
    save_checkpoint(directory, net, card)
    return net


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tissue")
    write_half_tissue_slide(d / "half.svs")
    save_detector(d / "avg", "avg")
    save_detector(d / "max", "max")
    return d


def _run(workdir, model="avg", **kw):
    events = []
    kw.setdefault("l0_region", WHOLE)
    kw.setdefault("device", "cpu")
    spec = InferenceSpec(slide_path=str(workdir / "half.svs"), model_path=str(workdir / model), **kw)
    return run_inference(spec, events.append), events


def _assemble(events, layer):
    patches = [e for e in events if isinstance(e, MapPatch) and e.layer == layer]
    first = patches[0]
    out = np.full(first.values.shape[:-2] + first.map_shape, np.nan, np.float32)
    for p in patches:
        r, c = p.cell_offset
        out[..., r:r + p.values.shape[-2], c:c + p.values.shape[-1]] = p.values
    return out, Box.of(first.map_l0_box), patches


def _forward_blocks(events) -> int:
    return max(e.total for e in events if isinstance(e, Progress) and e.phase == "forward")


def test_glass_cells_are_nan_and_their_blocks_never_run(workdir, tmp_path):
    result, events = _run(workdir, tissue_mask="auto", saliency=False, out_dir=str(tmp_path / "out"))
    prob, box, patches = _assemble(events, "prediction")
    assert box == Box(*WHOLE)
    tissue_cols = TISSUE_X1 // STRIDE
    assert np.isfinite(prob[:, :, :tissue_cols]).all()  # every tissue cell computed
    assert np.isnan(prob[:, :, tissue_cols:]).all()  # every glass cell not
    # One prediction patch per forward block run: the glass half's blocks were never run.
    total = _forward_blocks(events)
    assert len(patches) < total
    for p in patches:
        assert Box.of(p.l0_box).x0 < TISSUE_X1  # no block lies on glass only
    # The blocks run are exactly those owning a tissue cell, counted on the same tile plan.
    plan = StreamingModule(green_detector().trunk(), 128, freeze_batchnorm=True).tile_plan((SIZE[1], SIZE[0]))
    assert plan.n_blocks == total
    on_tissue = sum(1 for _ in plan.rows for cb in plan.cols if cb.own_start < tissue_cols)
    assert len(patches) == on_tissue < total
    assert result.prediction is not None


def test_the_prediction_pools_the_tissue_cells_only(workdir):
    masked, _ = _run(workdir, tissue_mask="auto", saliency=False)
    plain, _ = _run(workdir, tissue_mask="none", saliency=False)
    # Computed by hand: the conventional trunk in float64 on the region, its mean over tissue cells.
    net = green_detector().double()
    with torch.no_grad():
        fmap = net.trunk()(region_input(workdir / "half.svs"))
        keep = tissue_keep(workdir / "half.svs", fmap)
        logits = net.fc(fmap[0][:, torch.from_numpy(keep)].mean(dim=1)[None])
    assert keep[:, :TISSUE_X1 // STRIDE].all() and not keep[:, TISSUE_X1 // STRIDE:].any()
    expected = torch.softmax(logits, dim=1)[0].numpy()
    np.testing.assert_allclose(masked.prediction.probabilities, expected, rtol=0, atol=1e-5)
    # The unmasked mean is diluted by the glass half: a different answer.
    assert abs(plain.prediction.probabilities[1] - masked.prediction.probabilities[1]) > 0.05


def test_the_tissue_layer_comes_first_and_is_written_with_the_maps(workdir, tmp_path):
    out = tmp_path / "out"
    _, events = _run(workdir, tissue_mask="auto", saliency=True, out_dir=str(out))
    patches = [e for e in events if isinstance(e, MapPatch)]
    assert patches[0].layer == "tissue" and sum(p.layer == "tissue" for p in patches) == 1
    tissue = patches[0]
    prediction = next(p for p in patches if p.layer == "prediction")
    assert tissue.map_shape == prediction.map_shape and tissue.map_l0_box == prediction.map_l0_box
    tissue_cols = TISSUE_X1 // STRIDE
    assert (tissue.values[:, :tissue_cols] == 1).all() and (tissue.values[:, tissue_cols:] == 0).all()
    layers, meta = read_maps(out)
    assert set(layers) == {"prediction", "saliency", "tissue"} and meta["tissue_mask"] == "auto"
    np.testing.assert_array_equal(layers["tissue"].values, tissue.values)
    assert layers["tissue"].l0_box == layers["prediction"].l0_box
    assert (out / "tissue.heatmap.tif").is_file() and (out / "tissue.values.tif").is_file()
    # Saliency cells over glass are NaN too, and some over tissue are computed.
    saliency = layers["saliency"]
    cell = Box.of(saliency.l0_box).width / saliency.values.shape[1]
    glass_from = int(np.ceil(TISSUE_X1 / cell)) + 1
    assert np.isnan(saliency.values[:, glass_from:]).all()
    assert np.isfinite(saliency.values[:, : int(TISSUE_X1 // cell) - 1]).any()


def test_without_the_mask_nothing_changes(workdir, tmp_path):
    """tissue_mask "none", and None on a card that names no mask: every cell, no tissue layer,
    the same files bit for bit."""
    card = type("Card", (), {})()
    assert tissue_mask_setting(InferenceSpec(slide_path="s", model_path="m"), card) == "none"
    _, none_events = _run(workdir, tissue_mask="none", out_dir=str(tmp_path / "none"))
    _, default_events = _run(workdir, tissue_mask=None, out_dir=str(tmp_path / "default"))
    assert not any(isinstance(e, MapPatch) and e.layer == "tissue" for e in none_events + default_events)
    prob, _, patches = _assemble(none_events, "prediction")
    assert np.isfinite(prob).all() and len(patches) == _forward_blocks(none_events)
    a, meta_a = read_maps(tmp_path / "none")
    b, meta_b = read_maps(tmp_path / "default")
    assert set(a) == set(b) == {"prediction", "saliency"} and "tissue_mask" not in meta_a
    for name in a:
        assert a[name].values.tobytes() == b[name].values.tobytes() and a[name].l0_box == b[name].l0_box


def test_regions_and_tissue_combine_by_intersection(workdir):
    # A band across both halves: only its part on tissue is computed.
    band = shapely.box(256, 192, 768, 320)
    regions = AnnotationSet([Annotation.from_geometry(band, class_name="Band")])
    _, events = _run(workdir, model="max", tissue_mask="auto", saliency=False, regions=regions, l0_region=None)
    prob, box, _ = _assemble(events, "prediction")
    assert box == Box(256, 192, 768, 320)
    cols_on_tissue = (TISSUE_X1 - 256) // STRIDE
    assert np.isfinite(prob[:, :, :cols_on_tissue]).all() and np.isnan(prob[:, :, cols_on_tissue:]).all()


def test_a_masked_run_on_glass_only_says_there_is_no_tissue(workdir):
    with pytest.raises(SpecError, match="no tissue found"):
        _run(workdir, tissue_mask="auto", l0_region=(640, 0, 1024, 512))


def test_regions_of_excluded_classes_only_cover_the_usual_region_less_them(workdir):
    """Every annotation excluded and none to include: the run covers l0_region (else the tissue
    box) less the excluded areas, not nothing."""
    pen = shapely.box(128, 64, 320, 192)
    regions = AnnotationSet([Annotation.from_geometry(pen, class_name="Pen")])
    _, events = _run(workdir, model="max", tissue_mask="none", saliency=False, regions=regions, exclude_classes=("Pen",))
    prob, box, _ = _assemble(events, "prediction")
    assert box == Box(*WHOLE)
    under_pen = np.zeros(prob.shape[1:], bool)
    under_pen[64 // STRIDE:192 // STRIDE, 128 // STRIDE:320 // STRIDE] = True
    assert np.isnan(prob[:, under_pen]).all() and np.isfinite(prob[:, ~under_pen]).all()
    # Without l0_region, the tissue box less the pen.
    _, events = _run(workdir, model="max", tissue_mask="none", saliency=False, regions=regions, exclude_classes=("Pen",),
                     l0_region=None)
    prob, box, _ = _assemble(events, "prediction")
    assert box.x1 <= TISSUE_X1 + 64 and np.isnan(prob).any() and np.isfinite(prob).any()
    # An included class that is all excluded still covers nothing.
    with pytest.raises(SpecError, match="the regions cover nothing"):
        _run(workdir, model="max", saliency=False, regions=regions, include_classes=("Pen",), exclude_classes=("Pen",))
