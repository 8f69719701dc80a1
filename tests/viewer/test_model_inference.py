"""viewer.model.inference and viewer.model.layers: run options, the chosen model, the spec of a
run per scope, and layer keys (no Qt)."""

from __future__ import annotations

import pytest

from engine.geometry import Box
from viewer.model.inference import InferenceSettings, ModelChoice, inference_spec
from viewer.model.layers import PREDICTION, SALIENCY, LayerKey, default_style, layer_keys
from viewer.model.viewport import Viewport
from viewer.model.workspace import RecentFiles


def test_settings_notify_each_field_that_changes():
    settings = InferenceSettings()
    changed = []
    settings.changed.connect(changed.append)
    settings.set(device="cpu", saliency=True, low_memory=True)  # saliency is already on
    assert changed == ["device", "low_memory"] and settings.device == "cpu" and settings.low_memory
    with pytest.raises(AttributeError, match="tile"):
        settings.set(tile=512)


def test_model_choice_keeps_the_last_good_model_when_a_read_fails(tmp_path):
    model = ModelChoice(RecentFiles())
    changes = []
    model.changed.connect(lambda: changes.append((model.path, model.error, model.runnable)))
    model.set_has_slide(True)
    assert changes[-1] == (None, None, False)  # a slide but no model: nothing to run
    path = str(tmp_path / "model.json")
    model.loaded(path, card="card")
    assert changes[-1] == (path, None, True) and model.recent.paths == [path]
    model.failed("not JSON")
    assert changes[-1] == (path, "not JSON", True) and model.card == "card"
    model.set_has_slide(False)
    assert not model.runnable


@pytest.fixture
def viewport():
    vp = Viewport(4096, 3072, 800, 600)
    vp.set_scale(0.25)
    vp.center_on(700, 500)
    return vp


def test_a_whole_slide_run_starts_where_the_user_looks(viewport):
    settings = InferenceSettings(low_memory=True)
    spec = inference_spec("slide", "s.svs", "m.json", settings, viewport)
    assert spec.l0_region is None  # the engine takes the tissue box
    assert Box.of(spec.priority_l0_box) == viewport.l0_visible_box()
    assert (spec.slide_path, spec.model_path, spec.device, spec.saliency, spec.low_memory) == ("s.svs", "m.json", "auto", True, True)


def test_a_view_run_covers_the_visible_slide_in_whole_pixels(viewport):
    viewport.center_on(100, 100)  # the view reaches past the slide's top-left corner
    settings = InferenceSettings(device="cpu", saliency=False)
    spec = inference_spec("view", "s.svs", "m.json", settings, viewport)
    vis = viewport.l0_visible_box()
    assert Box.of(spec.l0_region) == Box(0, 0, int(vis.x1) + (vis.x1 % 1 > 0), int(vis.y1) + (vis.y1 % 1 > 0))
    assert spec.priority_l0_box is None and spec.device == "cpu" and not spec.saliency


def test_a_region_run_takes_the_drawn_rectangle(viewport):
    spec = inference_spec("region", "s.svs", "m.json", InferenceSettings(), viewport, Box(10, 20, 300, 400))
    assert Box.of(spec.l0_region) == Box(10, 20, 300, 400) and spec.priority_l0_box is None
    with pytest.raises(ValueError, match="rectangle"):
        inference_spec("region", "s.svs", "m.json", InferenceSettings(), viewport)
    with pytest.raises(ValueError, match="scope"):
        inference_spec("everything", "s.svs", "m.json", InferenceSettings(), viewport)


def test_layer_keys_keep_source_and_class_apart():
    keys = layer_keys(PREDICTION, ("normal", "tumour: grade 2"))
    assert keys == [LayerKey("prediction", "normal"), LayerKey("prediction", "tumour: grade 2")]
    assert str(keys[1]) == "prediction: tumour: grade 2" and keys[1].label == "tumour: grade 2"
    assert layer_keys("saliency", ("normal", "tumour")) == [SALIENCY] and SALIENCY.label == "saliency"
    assert default_style(SALIENCY).auto_range and default_style(SALIENCY).colormap == "magma"
    assert not default_style(keys[0]).auto_range and default_style(keys[0]).colormap == "viridis"
