"""Map layers: colour mapping, range/threshold/opacity, re-colouring off the UI thread, and
alignment of a patch with the slide at several zooms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BLOCK, block_colour

from engine.geometry import Box
from viewer.colormaps import COLORMAPS, LayerStyle, colourize, lut_rgba
from viewer.images import qimage_to_rgb
from viewer.overlay import ColouredPatch, LayerPatch, MapGeometry, OverlayStack, finite_range


def _bgra_to_rgb(bgra):
    return bgra[..., [2, 1, 0]]


def test_colourize_maps_range_ends_to_lut_ends_and_hides_nan_and_below_threshold():
    style = LayerStyle(colormap="magma", vmin=2.0, vmax=4.0, threshold=2.5)
    values = np.array([[1.0, 2.0, 2.5, 3.0, 4.0, 9.0, np.nan]], np.float32)
    bgra = colourize(values, style)
    lut = lut_rgba("magma")
    assert bgra.shape == (1, 7, 4) and bgra.dtype == np.uint8 and bgra.flags.c_contiguous
    assert (bgra[0, [0, 1, 6]] == 0).all()  # below the threshold, NaN: fully transparent
    assert (_bgra_to_rgb(bgra[0, 2]) == lut[64, :3]).all()  # 2.5 is a quarter of the range (index 63.75 -> 64)
    assert (_bgra_to_rgb(bgra[0, 4]) == lut[-1, :3]).all() and (_bgra_to_rgb(bgra[0, 5]) == lut[-1, :3]).all()
    assert (bgra[0, 2:6, 3] == 255).all()


@pytest.mark.parametrize("name", COLORMAPS)
def test_every_colormap_has_distinct_ends(name):
    lut = lut_rgba(name)
    assert lut.shape == (256, 4) and np.abs(lut[0].astype(int) - lut[-1]).sum() > 100


def test_style_version_changes_only_when_colours_change():
    style = LayerStyle()
    assert style.changed(opacity=0.2).version == style.version
    assert style.changed(smooth=True).version == style.version
    assert style.changed(colormap="magma").version == style.version + 1
    assert style.changed(threshold=0.3).version == style.version + 1


def test_legend_says_what_the_threshold_keeps():
    from viewer.widgets.colorbar import threshold_label

    assert threshold_label(LayerStyle(vmin=0.0, vmax=1.0, threshold=0.3)) == "≥ 0.3"
    # A floor at the range's start hides only cells equal to vmin (saliency's exact zeros).
    assert threshold_label(LayerStyle(vmin=0.0, vmax=7.6e-5, threshold=1e-30)) == "> 0"
    assert threshold_label(LayerStyle(vmin=0.0, vmax=7.6e-5, threshold=1e-7)) == "≥ 1e-07"


def _patch(generation, geometry, r0, c0, values, style, name="saliency"):
    values = np.asarray(values, np.float32)
    return ColouredPatch(generation, geometry, r0, c0, (LayerPatch(name, values, colourize(values, style), style.version, *finite_range(values)),))


@pytest.fixture
def stack(qtbot):
    from viewer.background import BackgroundRunner

    runner = BackgroundRunner(workers=1)
    stack = OverlayStack(runner.submit)
    yield stack
    runner.shutdown()


def test_stale_generation_patches_are_dropped(stack):
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(2)
    style = stack.style_for("saliency")
    assert not stack.add_patch(_patch(1, geometry, 0, 0, np.ones((2, 2)), style))
    assert not stack.layers
    assert stack.add_patch(_patch(2, geometry, 0, 0, np.ones((2, 2)), style))
    assert stack.layers["saliency"].value_at(5, 5) == 1.0 and stack.layers["saliency"].value_at(40, 40) is None


def test_style_change_recolours_on_a_worker_keeping_newer_patches(qtbot, stack):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    style = stack.style_for("prediction: tumour").changed(threshold=None)
    stack.styles = {"prediction: tumour": style}
    stack.add_patch(_patch(1, geometry, 0, 0, np.full((2, 4), 0.5), style, "prediction: tumour"))
    layer = stack.layers["prediction: tumour"]
    new_style = stack.set_style("prediction: tumour", colormap="cividis")
    assert layer.recolour_in_flight
    # A patch coloured (on the job worker) with the new style while the re-map runs.
    stack.add_patch(_patch(1, geometry, 2, 0, np.full((2, 4), 1.0), new_style, "prediction: tumour"))
    qtbot.waitUntil(lambda: not layer.recolour_in_flight and not layer.needs_recolour, timeout=5000)
    cividis = lut_rgba("cividis")
    assert (_bgra_to_rgb(layer.bgra[0, 0]) == cividis[128, :3]).all()
    assert (_bgra_to_rgb(layer.bgra[3, 3]) == cividis[255, :3]).all()


def test_patch_with_an_old_style_triggers_a_recolour(qtbot, stack):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    old = stack.style_for("prediction: tumour")
    stack.set_style("prediction: tumour", colormap="plasma")
    stack.add_patch(_patch(1, geometry, 0, 0, np.zeros((4, 4)), old, "prediction: tumour"))
    layer = stack.layers["prediction: tumour"]
    qtbot.waitUntil(lambda: not layer.recolour_in_flight and not layer.needs_recolour, timeout=5000)
    assert (_bgra_to_rgb(layer.bgra[1, 1]) == lut_rgba("plasma")[0, :3]).all()


def test_auto_range_follows_the_data_in_few_steps(qtbot, stack):
    geometry = MapGeometry(Box(0, 0, 100, 100), (10, 10))
    stack.begin(1)
    for i in range(10):
        stack.add_patch(_patch(1, geometry, i, 0, np.full((1, 10), 0.1 * (i + 1)), stack.style_for("saliency")))
    style = stack.layers["saliency"].style
    # A tight first fit, then growth by 1.5x: log_1.5(10) < 6 re-maps for a 10x rise, not 10.
    assert style.auto_range and 1.0 <= style.vmax <= 1.5 and style.version <= 1 + 6
    stack.fit_range("saliency")
    assert stack.layers["saliency"].style.vmax == pytest.approx(1.0) and not stack.layers["saliency"].style.auto_range


@pytest.mark.parametrize("scale", [0.05, 0.25, 1.0, 3.0])
def test_patch_paints_exactly_over_its_level0_box(qtbot, slide_view, synthetic_slide_path, stack, scale):
    from engine.slides import open_slide
    from viewer.sources import SharedSource

    slide_view.set_slide(SharedSource(open_slide(str(synthetic_slide_path))))
    slide_view.add_overlay(stack)
    stack.changed.connect(slide_view.update_l0_box)
    # A 32 x 24 map of 16-px cells starting at (1000, 1000); one patch lights cells (5..9, 3..7).
    geometry = MapGeometry(Box(1000, 1000, 1000 + 32 * 16, 1000 + 24 * 16), (24, 32))
    stack.begin(1)
    style = stack.set_style("saliency", vmin=0.0, vmax=1.0, opacity=1.0, auto_range=False)
    stack.set_active(None)
    stack.add_patch(_patch(1, geometry, 3, 5, np.ones((4, 4)), style))
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
    for name in ("prediction_tumour", "saliency"):
        stack.add_patch(_patch(1, geometry, 0, 0, np.ones((2, 2)), stack.style_for(name), name=name))
    panel.set_stack(stack)
    stack.set_active("saliency")
    for _ in range(3):  # the list is rebuilt whenever layers come and go
        panel.refresh()
        assert stack.active == "saliency" and panel.current_name == "saliency"
