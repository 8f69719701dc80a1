"""engine.api.run_inference on a slide and a model whose response is known."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from engine.api import run_inference
from engine.errors import CheckpointError, SlideError
from engine.events import CancelToken, Finished, MapPatch, Prediction, Progress
from engine.specs import InferenceSpec
from engine.io.maps import read_maps
from engine.slides import open_slide
from model_fixtures import CLASSES, GREEN_BOXES, save_green_detector, write_test_slide


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


def _l0_to_cell(box, map_box, shape):
    x0, y0, x1, y1 = box
    sx = (map_box[2] - map_box[0]) / shape[-1]
    sy = (map_box[3] - map_box[1]) / shape[-2]
    return (int((y0 - map_box[1]) / sy), int(np.ceil((y1 - map_box[1]) / sy)),
            int((x0 - map_box[0]) / sx), int(np.ceil((x1 - map_box[0]) / sx)))


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

    # Results on disk: npz with geometry, prediction JSON, TIFF images any slide reader opens.
    layers, meta = read_maps(result.outputs["maps_npz"])
    assert np.allclose(layers["prediction"].values, prob)
    assert layers["saliency"].l0_box == pytest.approx(sal_box)
    assert meta["classes"] == list(CLASSES)
    assert json.loads(open(result.outputs["prediction_json"]).read())["label"] == "green"
    with open_slide(result.outputs["saliency_tiff"]) as tif:
        assert tif.dimensions == (sal.shape[1], sal.shape[0])


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
    assert 60 <= box[0] <= 140 and box[2] <= 1000 and 20 <= box[1] <= 80


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
    assert first.l0_box[2] >= 900 and first.l0_box[3] >= 700
    _, plain = _run(workdir, saliency=False)
    assert next(e for e in plain if isinstance(e, MapPatch)).l0_box[:2] == (0.0, 0.0)


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
    import engine.streaming.module as module

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
    import engine.models.fold as fold

    folded = []
    real = fold.fold_batchnorm
    monkeypatch.setattr(fold, "fold_batchnorm", lambda trunk: folded.append((trunk, real(trunk))) or folded[-1][1])
    _run(workdir, device="cpu", saliency=False)
    (trunk, result), = folded
    has_bn = lambda m: any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert has_bn(trunk) and not has_bn(result)
