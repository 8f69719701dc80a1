"""Map layers on screen: the legend, re-colouring on a real worker, the painter's alignment of a
patch with the slide at several zooms, and the Overlays panel following the stack. (The
stack's logic without Qt: test_overlay_model.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from layer_patches import TUMOUR, bgra_to_rgb, patch_of

from engine.colormaps import lut_rgba
from engine.geometry import Box, MapGeometry
from tests.conftest import BLOCK, block_colour
from viewer.controllers.live_maps import call_soon
from viewer.model.layers import SALIENCY, LayerKey, LayerStyle
from viewer.model.overlays import OverlayStack
from viewer.render.overlay import OverlayPainter
from viewer.workers.images import qimage_to_rgb


def test_legend_says_what_the_threshold_keeps():
    from viewer.render.legend import threshold_label

    assert threshold_label(LayerStyle(vmin=0.0, vmax=1.0, threshold=0.3)) == "≥ 0.3"
    # A floor at the range's start hides only cells equal to vmin (saliency's exact zeros).
    assert threshold_label(LayerStyle(vmin=0.0, vmax=7.6e-5, threshold=1e-30)) == "> 0"
    assert threshold_label(LayerStyle(vmin=0.0, vmax=7.6e-5, threshold=1e-7)) == "≥ 1e-07"


@pytest.fixture
def stack(qtbot):
    from viewer.workers.background import BackgroundRunner

    runner = BackgroundRunner(workers=1)
    stack = OverlayStack(runner.submit, call_soon)
    yield stack
    runner.shutdown()


def test_style_change_recolours_on_a_worker_keeping_newer_patches(qtbot, stack):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    stack.add_patch(patch_of(1, geometry, 0, 0, np.full((2, 4), 0.5), stack.style_for(TUMOUR), TUMOUR))
    layer = stack.layers[TUMOUR]
    new_style = stack.set_style(TUMOUR, colormap="cividis")
    assert layer.recolour_in_flight
    # A patch coloured (on the job worker) with the new style while the re-map runs.
    stack.add_patch(patch_of(1, geometry, 2, 0, np.full((2, 4), 1.0), new_style, TUMOUR))
    qtbot.waitUntil(lambda: stack.painted, timeout=5000)
    cividis = lut_rgba("cividis")
    assert (bgra_to_rgb(layer.bgra[0, 0]) == cividis[128, :3]).all()
    assert (bgra_to_rgb(layer.bgra[3, 3]) == cividis[255, :3]).all()


@pytest.mark.parametrize("scale", [0.05, 0.25, 1.0, 3.0])
def test_patch_paints_exactly_over_its_level0_box(qtbot, slide_view, synthetic_slide_path, stack, scale):
    from engine.slides import open_slide
    from viewer.workers.sources import SharedSource

    slide_view.set_slide(SharedSource(open_slide(str(synthetic_slide_path))))
    painter = OverlayPainter(slide_view.update_l0_box)
    painter.set_stack(stack)
    slide_view.add_overlay(painter)
    # A 32 x 24 map of 16-px cells starting at (1000, 1000); one patch lights cells (5..9, 3..7).
    geometry = MapGeometry(Box(1000, 1000, 1000 + 32 * 16, 1000 + 24 * 16), (24, 32))
    stack.begin(1)
    style = stack.set_style(SALIENCY, vmin=0.0, vmax=1.0, opacity=1.0, auto_range=False)
    stack.set_active(None)
    stack.add_patch(patch_of(1, geometry, 3, 5, np.ones((4, 4)), style))
    l0_lit = geometry.cells_to_l0(5, 3, 9, 7)  # (1080, 1048) - (1144, 1112)
    slide_view.viewport.set_scale(scale)
    slide_view.center_on(*l0_lit.center)
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=10_000)
    rgb = qimage_to_rgb(slide_view.grab().toImage())
    t = slide_view.viewport.transform()
    lit = lut_rgba("magma")[255, :3].astype(int)
    sx0, sy0 = t.to_screen(l0_lit.x0, l0_lit.y0)
    sx1, sy1 = t.to_screen(l0_lit.x1, l0_lit.y1)
    # Inside (half a screen pixel in from each edge): the colormap's top colour.
    for fx, fy in [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]:
        px = int(np.clip(sx0 + fx * (sx1 - sx0), sx0 + 0.5, sx1 - 1.5)) if sx1 - sx0 > 2 else int((sx0 + sx1) / 2)
        py = int(np.clip(sy0 + fy * (sy1 - sy0), sy0 + 0.5, sy1 - 1.5)) if sy1 - sy0 > 2 else int((sy0 + sy1) / 2)
        assert np.abs(rgb[py, px].astype(int) - lit).max() <= 2, (scale, fx, fy, rgb[py, px])
    # One screen pixel outside each edge (and at least half a cell out when cells are
    # larger than a pixel): the slide, untouched.
    out = max(1.5, 0.5 * 16 * scale)
    for px, py in [(sx0 - out, (sy0 + sy1) / 2), (sx1 + out - 1, (sy0 + sy1) / 2), ((sx0 + sx1) / 2, sy0 - out), ((sx0 + sx1) / 2, sy1 + out - 1)]:
        l0_x, l0_y = t.to_l0(px, py)
        colour = rgb[int(py), int(px)].astype(int)
        assert np.abs(colour - block_colour(l0_x, l0_y)).max() < 16, (scale, px, py, colour)
    assert l0_lit.x1 < BLOCK * 2  # all inside block (1, 1): one slide colour around it


def test_rebuilding_the_layer_list_keeps_the_active_layer(qtbot, stack):
    from viewer.widgets.overlay_panel import OverlayPanel

    panel = OverlayPanel()
    qtbot.addWidget(panel)
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(1)
    for key in (TUMOUR, SALIENCY):
        stack.add_patch(patch_of(1, geometry, 0, 0, np.ones((2, 2)), stack.style_for(key), key))
    panel.set_stack(stack)
    stack.set_active(SALIENCY)
    for _ in range(3):  # the list is rebuilt whenever layers come and go
        panel.refresh()
        assert stack.active == SALIENCY and panel.current_key == SALIENCY


def test_the_panel_follows_style_changes_and_writes_the_users_edits(qtbot, stack):
    from PySide6.QtCore import Qt

    from viewer.widgets.overlay_panel import OverlayPanel

    panel = OverlayPanel()
    qtbot.addWidget(panel)
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(1)
    for key in (TUMOUR, SALIENCY):
        stack.add_patch(patch_of(1, geometry, 0, 0, np.ones((2, 2)), stack.style_for(key), key))
    panel.set_stack(stack)
    def ticked():
        return [panel.layer_list.item(i).checkState() == Qt.CheckState.Checked for i in range(2)]

    # Every layer has a tick box, ticked or not (an item without a check state draws none).
    assert all(panel.layer_list.item(i).data(Qt.ItemDataRole.CheckStateRole) is not None for i in range(2))
    assert panel.current_key == TUMOUR and ticked() == [True, False]
    stack.show_only(SALIENCY)  # not through the panel (a run revealing its saliency)
    assert panel.current_key == SALIENCY and ticked() == [False, True]
    assert panel.colormap.currentData() == "magma"
    panel.opacity.setValue(30)  # the user's edit goes to the selected layer
    assert stack.style_for(SALIENCY).opacity == pytest.approx(0.3) and stack.style_for(TUMOUR).opacity == 0.5
    panel.layer_list.item(0).setCheckState(Qt.CheckState.Checked)
    assert stack.style_for(TUMOUR).visible


def test_layer_names_in_the_list_are_the_keys_as_text(qtbot, stack):
    from viewer.widgets.overlay_panel import OverlayPanel

    panel = OverlayPanel()
    qtbot.addWidget(panel)
    stack.begin(1)
    key = LayerKey("prediction", "grade: 2")
    stack.add_patch(patch_of(1, MapGeometry(Box(0, 0, 8, 8), (1, 1)), 0, 0, np.ones((1, 1)), LayerStyle(), key))
    panel.set_stack(stack)
    assert panel.layer_list.item(0).text() == "prediction: grade: 2" and panel.current_key == key


def test_the_range_boxes_show_a_layer_of_tiny_values_legibly(qtbot, stack):
    """An attention map's weights are around 1e-4: the range boxes take enough decimals to
    show them (three showed 0.000 to 0.000) and step by a twentieth of the range."""
    from viewer.widgets.overlay_panel import OverlayPanel

    panel = OverlayPanel()
    qtbot.addWidget(panel)
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(1)
    stack.add_patch(patch_of(1, geometry, 0, 0, np.full((2, 2), 1.7e-4), stack.style_for(SALIENCY), SALIENCY))
    panel.set_stack(stack)
    stack.show_only(SALIENCY)
    stack.set_style(SALIENCY, vmin=0.0, vmax=1.7e-4, auto_range=False)
    assert panel.vmax.text().rstrip("0") not in ("0.", "0,") and panel.vmax.value() == pytest.approx(1.7e-4, rel=1e-3)
    assert panel.vmax.singleStep() == pytest.approx(1.7e-4 / 20)
    stack.set_style(SALIENCY, vmin=0.0, vmax=1.0)
    assert panel.vmax.decimals() == 3
