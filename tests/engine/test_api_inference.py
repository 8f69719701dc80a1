"""engine.api.run_inference on a slide and a model whose response is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from model_fixtures import CLASSES, GREEN_BOXES, save_green_detector, write_test_slide

from engine.api import run_inference, run_saliency
from engine.errors import CheckpointError, SlideError, SpecError
from engine.events import CancelToken, Finished, MapPatch, Prediction, Progress
from engine.geometry import Box
from engine.io.maps import read_maps
from engine.slides import open_slide
from engine.specs import InferenceSpec


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    write_test_slide(d / "green.svs")
    write_test_slide(d / "plain.svs", boxes=())
    save_green_detector(d / "model")
    return d


def _run(workdir, slide="green.svs", **kw):
    events = []
    spec = InferenceSpec(slide_path=str(workdir / slide), model_path=str(workdir / "model"),
                         l0_region=kw.pop("l0_region", (0, 0, 1024, 768)), **kw)
    result = run_inference(spec, events.append, kw.pop("cancel", None))
    return result, events


def _assemble(events, layer):
    patches = [e for e in events if isinstance(e, MapPatch) and e.layer == layer]
    first = patches[0]
    shape = first.values.shape[:-2] + first.map_shape
    out = np.full(shape, np.nan, np.float32)
    for p in patches:
        r, c = p.cell_offset
        out[..., r:r + p.values.shape[-2], c:c + p.values.shape[-1]] = p.values
    return out, first.map_l0_box, patches


def _l0_to_cell(box, map_box: Box, shape):
    box = Box.of(box)
    sx = map_box.width / shape[-1]
    sy = map_box.height / shape[-2]
    return (int((box.y0 - map_box.y0) / sy), int(np.ceil((box.y1 - map_box.y0) / sy)),
            int((box.x0 - map_box.x0) / sx), int(np.ceil((box.x1 - map_box.x0) / sx)))


def test_prediction_and_saliency_light_up_exactly_on_green(workdir, tmp_path):
    result, events = _run(workdir, out_dir=str(tmp_path / "out"))
    assert isinstance(events[-1], Finished) and not result.cancelled
    pred = next(e for e in events if isinstance(e, Prediction))
    assert pred.label == "green" and pred.probabilities[1] > 0.99

    prob, map_box, patches = _assemble(events, "prediction")
    assert len(patches) > 1  # live: one patch per finished tile
    assert not np.isnan(prob).any()
    green = prob[1]
    inside = np.zeros(green.shape, bool)
    near = np.zeros(green.shape, bool)
    for box in GREEN_BOXES:
        r0, r1, c0, c1 = _l0_to_cell(box, map_box, prob.shape)
        inside[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = True  # cells wholly inside the square
        near[max(r0 - 3, 0):r1 + 3, max(c0 - 3, 0):c1 + 3] = True  # within the receptive field
    assert (green[inside] > 0.99).all()
    assert (green[~near] < 0.2).all()

    sal, sal_box, sal_patches = _assemble(events, "saliency")
    assert len(sal_patches) > 1
    assert sal.max() > 0
    mass_near = 0.0
    for box in GREEN_BOXES:
        x0, y0, x1, y1 = box
        r0, r1, c0, c1 = _l0_to_cell((x0 - 48, y0 - 48, x1 + 48, y1 + 48), sal_box, sal.shape)
        mass_near += sal[max(r0, 0):r1, max(c0, 0):c1].sum()
    assert mass_near / sal.sum() > 0.99  # the network looks at green and nowhere else

    # Results on disk: npz with geometry, prediction JSON, TIFFs registered to the slide that any slide reader opens.
    layers, meta = read_maps(result.outputs["maps_npz"])
    assert np.allclose(layers["prediction"].values, prob)
    assert layers["saliency"].l0_box == pytest.approx(sal_box.as_tuple())
    assert meta["classes"] == list(CLASSES)
    assert json.loads(open(result.outputs["prediction_json"]).read())["label"] == "green"
    cell = sal_box.width / sal.shape[1]
    with open_slide(workdir / "green.svs") as slide, open_slide(result.outputs["saliency_heatmap_tiff"]) as tif:
        assert tif.dimensions == (math.ceil(slide.dimensions[0] / cell), math.ceil(slide.dimensions[1] / cell))


def test_plain_slide_is_predicted_other_with_progress_and_eta(workdir):
    result, events = _run(workdir, "plain.svs", saliency=False)
    assert result.prediction.label == "other"
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and progress[-1].done == progress[-1].total and progress[-1].eta_s == pytest.approx(0, abs=1e-6)
    assert not any(isinstance(e, MapPatch) and e.layer == "saliency" for e in events)


def test_cancel_stops_at_next_tile_keeps_finished_work_and_rerun_works(workdir, tmp_path):
    token = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, MapPatch) and len([s for s in seen if isinstance(s, MapPatch)]) == 2:
            token.cancel()

    spec = InferenceSpec(slide_path=str(workdir / "green.svs"), model_path=str(workdir / "model"),
                         l0_region=(0, 0, 1024, 768), out_dir=str(tmp_path / "cancelled"))
    result = run_inference(spec, on_event, token)
    assert result.cancelled
    patches = [e for e in seen if isinstance(e, MapPatch)]
    assert len(patches) == 2  # stopped at the next tile
    layers, meta = read_maps(result.outputs["maps_npz"])
    assert meta["cancelled"] is True
    assert np.isfinite(layers["prediction"].values).sum() > 0  # finished cells were kept
    again, _ = _run(workdir)
    assert not again.cancelled and again.prediction.label == "green"


def test_tissue_box_is_the_default_region(workdir):
    events = []
    spec = InferenceSpec(slide_path=str(workdir / "green.svs"), model_path=str(workdir / "model"), saliency=False)
    run_inference(spec, events.append)
    box = next(e for e in events if isinstance(e, MapPatch)).map_l0_box
    # The purple tissue spans x 128..960, y 64..704 (plus a small margin); the grey border is left out.
    assert 60 <= box.x0 <= 140 and box.x1 <= 1000 and 20 <= box.y0 <= 80


def test_bad_slide_and_bad_model_raise_their_errors(workdir, tmp_path):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide" * 100)
    with pytest.raises(SlideError, match="junk.svs"):
        run_inference(InferenceSpec(str(junk), str(workdir / "model")), lambda e: None)
    (tmp_path / "badmodel").mkdir()
    (tmp_path / "badmodel" / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        run_inference(InferenceSpec(str(workdir / "green.svs"), str(tmp_path / "badmodel")), lambda e: None)


def test_priority_box_is_computed_first(workdir):
    _, events = _run(workdir, saliency=False, priority_l0_box=(768, 512, 1024, 768))
    first = next(e for e in events if isinstance(e, MapPatch))
    # The first patch is the block nearest the bottom-right corner asked for.
    assert first.l0_box.x1 >= 900 and first.l0_box.y1 >= 700
    _, plain = _run(workdir, saliency=False)
    first_plain = next(e for e in plain if isinstance(e, MapPatch)).l0_box
    assert (first_plain.x0, first_plain.y0) == (0.0, 0.0)


def test_cancel_during_saliency_keeps_prediction_and_finished_saliency(workdir):
    token = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, MapPatch) and e.layer == "saliency":
            token.cancel()

    spec = InferenceSpec(slide_path=str(workdir / "green.svs"), model_path=str(workdir / "model"),
                         l0_region=(0, 0, 1024, 768))
    result = run_inference(spec, on_event, token)
    assert result.cancelled and result.prediction is not None
    assert len([e for e in seen if isinstance(e, MapPatch) and e.layer == "saliency"]) == 1


def test_low_memory_gives_freed_heap_back_after_every_block_and_changes_no_value(workdir, monkeypatch):
    import engine.streaming.passes as module

    calls = []
    monkeypatch.setattr(module, "release_free_heap", lambda: calls.append(1))
    plain, plain_events = _run(workdir, device="cpu")
    assert calls == []
    low, low_events = _run(workdir, device="cpu", low_memory=True)
    forward_blocks = max(e.total for e in low_events if isinstance(e, Progress) and e.phase == "forward")
    assert forward_blocks > 1 and len(calls) > forward_blocks  # every forward block, and the backward ones
    assert low.prediction == plain.prediction
    np.testing.assert_array_equal(_assemble(low_events, "saliency")[0], _assemble(plain_events, "saliency")[0])


def test_inference_streams_the_trunk_with_its_batchnorm_folded(workdir, monkeypatch):
    import engine.infer as infer

    folded = []
    real = infer.fold_batchnorm
    monkeypatch.setattr(infer, "fold_batchnorm", lambda trunk: folded.append((trunk, real(trunk))) or folded[-1][1])
    _run(workdir, device="cpu", saliency=False)
    (trunk, result), = folded
    has_bn = lambda m: any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert has_bn(trunk) and not has_bn(result)


def test_patches_carry_boxes_that_tile_their_map(workdir):
    """Patch and map boxes are Boxes on level 0; the prediction map ends at the region, the
    saliency map at its last whole cell; every patch lies inside its map."""
    _, events = _run(workdir, l0_region=(0, 0, 1000, 700), saliency_cell=16)
    for layer in ("prediction", "saliency"):
        patches = [e for e in events if isinstance(e, MapPatch) and e.layer == layer]
        map_box = patches[0].map_l0_box
        assert isinstance(map_box, Box) and all(isinstance(p.l0_box, Box) for p in patches)
        for p in patches:
            assert p.l0_box.intersect(map_box) == p.l0_box and p.map_l0_box == map_box
    prediction = next(e for e in events if isinstance(e, MapPatch) and e.layer == "prediction")
    saliency = next(e for e in events if isinstance(e, MapPatch) and e.layer == "saliency")
    # Level 0 is read (the model's MPP): 1000 x 700 pixels; the trunk's cells are 16 pixels
    # (smallnet's stride), and so are the saliency cells asked for.
    (h, w) = prediction.map_shape
    assert prediction.map_l0_box == Box(0, 0, min(16 * w, 1000), min(16 * h, 700))
    assert saliency.map_shape == (44, 63) and saliency.map_l0_box == Box(0, 0, 63 * 16, 44 * 16)


def test_run_saliency_turns_saliency_on(workdir):
    events = []
    spec = InferenceSpec(slide_path=str(workdir / "green.svs"), model_path=str(workdir / "model"),
                         l0_region=(0, 0, 512, 512), saliency=False)
    run_saliency(spec, events.append)
    assert any(isinstance(e, MapPatch) and e.layer == "saliency" for e in events)


def test_a_saliency_class_the_model_lacks_is_a_spec_error_naming_the_class_count(workdir):
    with pytest.raises(SpecError, match=f"has {len(CLASSES)} classes"):
        _run(workdir, saliency_class=len(CLASSES))
    _run(workdir, saliency_class=len(CLASSES), saliency=False)  # no saliency: the class is not used


@pytest.mark.parametrize("field, value, needle", [
    ("device", "tpu", "unknown device 'tpu'"),
    ("device", "cuda:x", "unknown device"),
    ("tile_size", 0, "tile_size"),
    ("saliency_cell", 0, "saliency_cell"),
    ("saliency_class", -1, "saliency_class"),
    ("l0_region", (0, 0, 10), "l0_region must be a box"),
])
def test_an_impossible_spec_is_refused_when_it_is_made(field, value, needle):
    with pytest.raises(SpecError, match=needle):
        InferenceSpec("s.svs", "m", **{field: value})
    with pytest.raises(ValueError):  # SpecError stays a ValueError for older callers
        InferenceSpec("s.svs", "m", **{field: value})


def test_spec_boxes_given_as_numbers_are_stored_as_boxes():
    spec = InferenceSpec("s.svs", "m", l0_region=[0, 0, 10, 20], priority_l0_box=(1.5, 2, 3, 4), device="cuda:1")
    assert spec.l0_region == Box(0, 0, 10, 20) and spec.priority_l0_box == Box(1.5, 2, 3, 4)
    assert InferenceSpec("s.svs", "m", l0_region=spec.l0_region).l0_region is spec.l0_region
