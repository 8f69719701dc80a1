"""viewer.model.overlays without Qt: colour mapping, styles, generations, re-colouring (run by
a stand-in for the worker), auto range, which layers show by default, and the value readout."""

from __future__ import annotations

import numpy as np
import pytest
from layer_patches import NORMAL, TUMOUR, bgra_to_rgb, patch_of

from engine.colormaps import COLORMAPS, lut_rgba
from engine.geometry import Box, MapGeometry
from viewer.model.layers import SALIENCY, LayerStyle, colourize
from viewer.model.overlays import OverlayStack


class DeferredWorker:
    """``BackgroundRunner.submit``'s shape; the jobs run when the test says, as a worker's would."""

    def __init__(self) -> None:
        self.jobs: list = []

    def submit(self, fn, *args, on_done, on_error=None):
        self.jobs.append((fn, args, on_done))

    def run_all(self) -> int:
        n = 0
        while self.jobs:
            fn, args, on_done = self.jobs.pop(0)
            on_done(fn(*args))
            n += 1
        return n


class Soon:
    """``call_soon`` that runs its callbacks when the test turns the 'event loop'."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, callback) -> None:
        self.pending.append(callback)

    def turn(self) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback()


@pytest.fixture
def worker():
    return DeferredWorker()


@pytest.fixture
def soon():
    return Soon()


@pytest.fixture
def stack(worker, soon):
    return OverlayStack(worker.submit, soon)


def test_colourize_maps_range_ends_to_lut_ends_and_hides_nan_and_below_threshold():
    style = LayerStyle(colormap="magma", vmin=2.0, vmax=4.0, threshold=2.5)
    values = np.array([[1.0, 2.0, 2.5, 3.0, 4.0, 9.0, np.nan]], np.float32)
    bgra = colourize(values, style)
    lut = lut_rgba("magma")
    assert bgra.shape == (1, 7, 4) and bgra.dtype == np.uint8 and bgra.flags.c_contiguous
    assert (bgra[0, [0, 1, 6]] == 0).all()  # below the threshold, NaN: fully transparent
    assert (bgra_to_rgb(bgra[0, 2]) == lut[64, :3]).all()  # 2.5 is a quarter of the range (index 63.75 -> 64)
    assert (bgra_to_rgb(bgra[0, 4]) == lut[-1, :3]).all() and (bgra_to_rgb(bgra[0, 5]) == lut[-1, :3]).all()
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


def test_stale_generation_patches_are_dropped(stack):
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(2)
    style = stack.style_for(SALIENCY)
    assert not stack.add_patch(patch_of(1, geometry, 0, 0, np.ones((2, 2)), style))
    assert not stack.layers
    assert stack.add_patch(patch_of(2, geometry, 0, 0, np.ones((2, 2)), style))
    assert stack.layers[SALIENCY].value_at(5, 5) == 1.0 and stack.layers[SALIENCY].value_at(40, 40) is None


def test_a_style_change_recolours_the_layer_keeping_patches_made_meanwhile(stack, worker):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    style = stack.style_for(TUMOUR)
    stack.add_patch(patch_of(1, geometry, 0, 0, np.full((2, 4), 0.5), style, TUMOUR))
    layer = stack.layers[TUMOUR]
    new_style = stack.set_style(TUMOUR, colormap="cividis")
    assert layer.recolour_in_flight and len(worker.jobs) == 1
    # A patch coloured (on the job worker) with the new style while the re-map runs.
    stack.add_patch(patch_of(1, geometry, 2, 0, np.full((2, 4), 1.0), new_style, TUMOUR))
    worker.run_all()
    assert not layer.recolour_in_flight and not layer.needs_recolour and stack.painted
    cividis = lut_rgba("cividis")
    assert (bgra_to_rgb(layer.bgra[0, 0]) == cividis[128, :3]).all()
    assert (bgra_to_rgb(layer.bgra[3, 3]) == cividis[255, :3]).all()


def test_a_patch_with_an_old_style_is_recoloured(stack, worker):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    old = stack.style_for(TUMOUR)
    stack.set_style(TUMOUR, colormap="plasma")
    stack.add_patch(patch_of(1, geometry, 0, 0, np.zeros((4, 4)), old, TUMOUR))
    assert not stack.painted
    worker.run_all()
    layer = stack.layers[TUMOUR]
    assert stack.painted and (bgra_to_rgb(layer.bgra[1, 1]) == lut_rgba("plasma")[0, :3]).all()


def test_a_re_map_made_with_a_style_since_replaced_is_redone(stack, worker):
    geometry = MapGeometry(Box(0, 0, 40, 40), (4, 4))
    stack.begin(1)
    stack.add_patch(patch_of(1, geometry, 0, 0, np.zeros((4, 4)), stack.style_for(TUMOUR), TUMOUR))
    stack.set_style(TUMOUR, colormap="plasma")
    stack.set_style(TUMOUR, colormap="cividis")  # while the plasma re-map is still on the worker
    assert worker.run_all() == 2  # plasma (discarded), then cividis
    assert (bgra_to_rgb(stack.layers[TUMOUR].bgra[0, 0]) == lut_rgba("cividis")[0, :3]).all()


def test_auto_range_follows_the_data_in_few_steps(stack):
    geometry = MapGeometry(Box(0, 0, 100, 100), (10, 10))
    stack.begin(1)
    for i in range(10):
        stack.add_patch(patch_of(1, geometry, i, 0, np.full((1, 10), 0.1 * (i + 1)), stack.style_for(SALIENCY)))
    style = stack.layers[SALIENCY].style
    # A tight first fit, then growth by 1.5x: log_1.5(10) < 6 re-maps for a 10x rise, not 10.
    assert style.auto_range and 1.0 <= style.vmax <= 1.5 and style.version <= 1 + 6
    stack.fit_range(SALIENCY)
    assert stack.layers[SALIENCY].style.vmax == pytest.approx(1.0) and not stack.layers[SALIENCY].style.auto_range


def test_only_the_last_class_shows_by_default_and_is_active(stack):
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(1)
    for key in (NORMAL, TUMOUR, SALIENCY):
        stack.add_patch(patch_of(1, geometry, 0, 0, np.ones((2, 2)), stack.style_for(key), key))
    assert [k for k in stack.layers if stack.style_for(k).visible] == [TUMOUR] and stack.active == TUMOUR
    assert stack.values_at(5, 5) == [(TUMOUR, 1.0)]  # hidden layers are not read out
    stack.show_only(SALIENCY)
    assert [k for k in stack.layers if stack.style_for(k).visible] == [SALIENCY] and stack.active == SALIENCY


def test_patches_of_one_burst_repaint_once_over_their_union(stack, soon):
    geometry = MapGeometry(Box(0, 0, 64, 64), (4, 4))
    stack.begin(1)
    repaints = []
    stack.changed.connect(repaints.append)
    style = stack.style_for(TUMOUR)
    stack.add_patch(patch_of(1, geometry, 0, 0, np.ones((1, 1)), style, TUMOUR))  # a new layer: repaint everything
    assert repaints == [None]
    stack.add_patch(patch_of(1, geometry, 0, 1, np.ones((1, 1)), style, TUMOUR))
    stack.add_patch(patch_of(1, geometry, 2, 2, np.ones((1, 1)), style, TUMOUR))
    assert repaints == [None]  # not until the event loop turns
    soon.turn()
    assert repaints == [None, Box(16, 0, 48, 48)]
