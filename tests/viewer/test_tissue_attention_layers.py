"""The tissue mask and the attention map in the viewer: the model panel's "Tissue mask" box
follows the loaded model's card and goes into the run's spec; the "tissue" and "attention" layers
a run emits are listed in the overlay panel like the prediction map and can be ticked on and off;
the attention map's final, normalised patch refits its colour range."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import Qt

from engine.events import Finished, MapPatch, Prediction
from engine.io.checkpoints import ModelCard, build_model, save_checkpoint
from viewer.controllers.live_maps import LiveMaps
from viewer.model.inference import InferenceSettings, ModelChoice
from viewer.model.layers import ATTENTION, TISSUE, LayerKey, default_style
from viewer.model.viewport import Viewport
from viewer.model.workspace import RecentFiles, Workspace
from viewer.widgets.model_panel import ModelPanel
from viewer.widgets.overlay_panel import OverlayPanel

CLASSES = ("normal", "tumour")
SLIDE = "/slides/a.svs"
MAP_HW = (4, 8)  # cells, 64 level-0 px each
MAP_BOX = (0, 0, 8 * 64, 4 * 64)


class LayersRunner:
    """Emits what a masked run of an attention model emits: the tissue mask first (left half
    tissue), per block a prediction patch and unnormalised attention, then the normalised
    attention over the whole map."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, spec, on_event, cancel) -> Finished:
        self.calls.append(spec)
        tissue = np.zeros(MAP_HW, np.float32)
        tissue[:, :4] = 1
        on_event(MapPatch("tissue", MAP_BOX, tissue, (0, 0), MAP_HW, MAP_BOX, CLASSES))
        weights = np.full(MAP_HW, np.nan, np.float32)
        for c0 in (0, 2):  # two blocks on tissue; the glass half was skipped
            box = (c0 * 64, 0, (c0 + 2) * 64, 4 * 64)
            probs = np.full((2, 4, 2), 0.5, np.float32)
            live = np.arange(8, dtype=np.float32).reshape(4, 2) + 10 * c0 + 1  # exp(score): large numbers
            weights[:, c0:c0 + 2] = live
            on_event(MapPatch("prediction", box, probs, (0, c0), MAP_HW, MAP_BOX, CLASSES))
            on_event(MapPatch("attention", box, live, (0, c0), MAP_HW, MAP_BOX, CLASSES))
        on_event(MapPatch("attention", MAP_BOX, weights / np.nansum(weights), (0, 0), MAP_HW, MAP_BOX, CLASSES))
        prediction = Prediction(CLASSES, (0.5, 0.5))
        on_event(prediction)
        finished = Finished(cancelled=False, prediction=prediction)
        on_event(finished)
        return finished


@pytest.fixture
def runner():
    return LayersRunner()


@pytest.fixture
def live(qtbot, runner):
    workspace = Workspace(RecentFiles())
    workspace.add(SLIDE, SimpleNamespace(slide_id=1))
    workspace.slides[SLIDE].viewport = Viewport(4096, 3072, 800, 600)
    controller = LiveMaps(workspace, InferenceSettings(), ModelChoice(RecentFiles()), lambda message: None,
                          runner)
    workspace.show(SLIDE)
    yield controller
    controller.shutdown()


def _save_model(directory, tissue_mask):
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", input_mpp=0.5, tile_size=512,
                     model_kwargs={"width": 4}, tissue_mask=tissue_mask)
    return save_checkpoint(directory, build_model(card), card)


def test_the_tissue_mask_box_follows_the_card_and_reaches_the_spec(qtbot, live, runner, tmp_path):
    panel = ModelPanel(live.settings, live.model)
    qtbot.addWidget(panel)
    panel.run_requested.connect(live.run)  # as the main window wires it
    assert not panel.tissue_mask.isChecked()  # no model yet
    with qtbot.waitSignal(live.card_loaded, timeout=10_000):
        live.load_model(str(_save_model(tmp_path / "masked", "auto")))
    assert panel.tissue_mask.isChecked() and live.settings.tissue_mask  # as the model was trained
    with qtbot.waitSignal(live.job_finished, timeout=10_000):
        live.run("slide")
    specs = runner.calls
    assert specs[-1].tissue_mask == "auto"
    panel.tissue_mask.click()  # the user turns it off
    assert not live.settings.tissue_mask
    with qtbot.waitSignal(live.job_finished, timeout=10_000):
        panel.slide_button.click()
    assert specs[-1].tissue_mask == "none"
    # A model from before the tissue mask (its card names none) runs on every cell.
    with qtbot.waitSignal(live.card_loaded, timeout=10_000):
        live.load_model(str(_save_model(tmp_path / "old", None)))
    assert not panel.tissue_mask.isChecked()
    live.settings.set(tissue_mask=True)  # the settings drive the box too
    assert panel.tissue_mask.isChecked()


def test_tissue_and_attention_layers_are_listed_and_toggle(qtbot, live):
    live.model.loaded("/models/m/model.json", SimpleNamespace(classes=CLASSES, tissue_mask="auto"))
    panel = OverlayPanel()
    qtbot.addWidget(panel)
    live.stack_shown.connect(panel.set_stack)
    panel.set_stack(live.stack_for(SLIDE))
    with qtbot.waitSignal(live.job_finished, timeout=10_000):
        live.run("slide")
    stack = live.stack
    qtbot.waitUntil(lambda: stack.painted, timeout=10_000)
    names = [panel.layer_list.item(row).text() for row in range(panel.layer_list.count())]
    assert names == ["tissue", "prediction: normal", "prediction: tumour", "attention"]
    # The tissue layer: 1 on tissue, glass transparent (below its threshold).
    tissue = stack.layers[TISSUE]
    assert tissue.value_at(100, 100) == 1.0 and tissue.value_at(400, 100) == 0.0
    assert tissue.bgra[0, 6, 3] == 0 and tissue.bgra[0, 1, 3] == 255
    # The attention layer ends normalised over the tissue, NaN (transparent) on glass.
    attention = stack.layers[ATTENTION]
    assert np.nansum(attention.values.astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert attention.value_at(400, 100) is None
    # Its range was refitted to the normalised weights (the live weights went up to 28).
    style = stack.style_for(ATTENTION)
    assert style.auto_range and style.vmax == pytest.approx(float(np.nanmax(attention.values)))
    # Both start hidden, the prediction map shown; ticking them in the panel shows them.
    assert not stack.style_for(TISSUE).visible and not stack.style_for(ATTENTION).visible
    assert stack.style_for(LayerKey("prediction", "tumour")).visible
    for row, key in ((0, TISSUE), (3, ATTENTION)):
        item = panel.layer_list.item(row)
        item.setCheckState(Qt.CheckState.Checked)
        assert stack.style_for(key).visible
        panel.layer_list.setCurrentItem(item)
        assert stack.active == key
        item.setCheckState(Qt.CheckState.Unchecked)
        assert not stack.style_for(key).visible
    # The value readout reads them like any layer.
    stack.show_only(TISSUE)
    assert live.values_at((100, 100)) == [(TISSUE, 1.0)]


def test_default_styles_of_the_new_layers():
    tissue, attention = default_style(TISSUE), default_style(ATTENTION)
    assert tissue.threshold == 0.5 and (tissue.vmin, tissue.vmax) == (0.0, 1.0) and not tissue.auto_range
    assert attention.auto_range and attention.colormap != default_style(LayerKey("prediction", "x")).colormap
