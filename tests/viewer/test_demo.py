"""``make demo`` (viewer.demo): the headless fallback end to end with the bundled model, its exit
codes, the choice between window and headless, and the window path up to saliency on screen."""

from __future__ import annotations

import io
import json
import shutil
import signal

import numpy as np
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtGui import QImage

from engine.api import demo_model_dir, read_maps, showcase_slide
from engine.colormaps import lut_rgba
from engine.errors import SlideError
from engine.geometry import Box
from viewer import demo
from viewer.controllers.demo import NO_GRADIENT, SALIENCY_SHOWN_FROM
from viewer.main_window import MainWindow
from viewer.model.layers import PREDICTION, SALIENCY
from viewer.render.legend import LEGEND_H, LEGEND_W, MARGIN
from viewer.workers.images import qimage_to_rgb

DEMO_MODEL_DIR = demo_model_dir()


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """The showcase slide, generated once (about 3 s) into a cache folder of its own."""
    cache = tmp_path_factory.mktemp("demo-slides")
    demo.prepare_slide(cache, io.StringIO())
    return cache


@pytest.fixture
def bundled_model():
    if not (DEMO_MODEL_DIR / "model.safetensors").exists():
        pytest.fail(f"the bundled demo model is missing at {DEMO_MODEL_DIR}; `make demo` needs it "
                    "(python resources/train_demo_model.py rebuilds it)")
    return DEMO_MODEL_DIR


def settings_in(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.mark.parametrize("env, platform, expected", [
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({}, "linux", False),  # ssh, CI, containers
    ({"DISPLAY": ""}, "linux", False),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "linux", False),
    ({"WAYLAND_DISPLAY": "wayland-0", "QT_QPA_PLATFORM": "minimal"}, "linux", False),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux", True),
    ({}, "darwin", True),  # no DISPLAY there, yet a screen
    ({}, "win32", True),
    ({"QT_QPA_PLATFORM": "offscreen"}, "win32", False),
])
def test_wants_window_only_with_a_display_and_qt_not_offscreen(env, platform, expected):
    assert demo.wants_window(env, platform) is expected


def test_missing_bundled_model_exits_with_its_code_and_names_the_file(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "resources" / "demo_model"
    monkeypatch.setattr(demo, "DEMO_MODEL_DIR", missing)
    code = demo.main(["--headless", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "slides")])
    err = capsys.readouterr().err
    assert code == demo.EXIT_MODEL
    assert str(missing) in err and "python resources/train_demo_model.py" in err
    assert not (tmp_path / "slides").exists() and not (tmp_path / "out").exists()  # nothing done before the check


def test_corrupt_model_exits_with_the_model_code(tmp_path, bundled_model, capsys):
    model = tmp_path / "model"
    shutil.copytree(bundled_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code = demo.main(["--headless", "--model", str(model), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "slides")])
    err = capsys.readouterr().err
    assert code == demo.EXIT_MODEL and str(weights) in err and "sha256 mismatch" in err


def test_failed_run_exits_with_the_job_code(qtbot, tmp_path, demo_cache, bundled_model, monkeypatch, capsys):
    import engine.api

    def broken_run(spec, on_event, cancel):
        raise SlideError(f"{spec.slide_path}: level 1 could not be read (test)")

    monkeypatch.setattr(engine.api, "run_inference", broken_run)  # the worker imports it at run time
    code = demo.main(["--headless", "--out", str(tmp_path / "out"), "--cache", str(demo_cache)])
    err = capsys.readouterr().err
    assert code == demo.EXIT_JOB and "The model run failed" in err and "could not be read (test)" in err
    assert not (tmp_path / "out" / demo.VIEW_PNG).exists()


def bare_view(qtbot, tmp_path, slide) -> tuple[np.ndarray, object]:
    """The demo's view of the slide without any overlay: same window size, fitted, filtered."""
    window = MainWindow(settings=settings_in(tmp_path), popups=False)
    qtbot.addWidget(window)
    window.resize(*demo.HEADLESS_WINDOW)
    window.show()
    try:
        with qtbot.waitSignal(window.slides.slide_shown, timeout=20_000):
            window.slides.show_or_open(str(slide))
        window.view.fit()
        qtbot.waitUntil(lambda: not window.view.moving and not window.view.missing_visible_tiles(), timeout=20_000)
        return qimage_to_rgb(window.view.render_image()), window.view.viewport.transform()
    finally:
        window.shutdown()


def screen_samples(layer, transform, shape) -> np.ndarray:
    """The layer's value under the centre of every screen pixel (NaN off the map)."""
    (x0, y0, x1, y1), values = Box.of(layer.l0_box).as_tuple(), layer.values
    h, w = shape
    l0_x = transform.l0_x0 + (np.arange(w) + 0.5) / transform.scale
    l0_y = transform.l0_y0 + (np.arange(h) + 0.5) / transform.scale
    col = np.floor((l0_x - x0) / (x1 - x0) * values.shape[1]).astype(int)
    row = np.floor((l0_y - y0) / (y1 - y0) * values.shape[0]).astype(int)
    inside = (row[:, None] >= 0) & (row[:, None] < values.shape[0]) & (col[None] >= 0) & (col[None] < values.shape[1])
    out = np.full((h, w), np.nan, np.float32)
    out[inside] = values[np.clip(row, 0, values.shape[0] - 1)[:, None].repeat(w, 1)[inside],
                         np.clip(col, 0, values.shape[1] - 1)[None].repeat(h, 0)[inside]]
    return out


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-px, px + 1):
        for dx in range(-px, px + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_headless_demo_writes_the_saliency_view_and_the_maps(qtbot, tmp_path, demo_cache, bundled_model, capsys):
    out = tmp_path / "out"
    code = demo.main(["--headless", "--out", str(out), "--cache", str(demo_cache)])
    captured = capsys.readouterr()
    assert code == demo.EXIT_OK, captured.err
    assert "(cached)" in captured.out  # the fixture made the slide; the demo reused it

    # Maps: finite class probabilities everywhere on the map, saliency finite and not all zero.
    layers, meta = read_maps(out / "maps.npz")
    prediction, saliency = layers["prediction"].values, layers["saliency"].values
    assert prediction.shape[0] == 2 and np.isfinite(prediction).all() and np.allclose(prediction.sum(0), 1, atol=1e-4)
    assert np.isfinite(saliency).all() and saliency.max() > 0
    assert meta["classes"] == ["normal", "lesion"]
    for name in ("prediction.json", "saliency.heatmap.tif", "prediction_lesion.heatmap.tif", "prediction_normal.values.tif"):
        assert (out / name).stat().st_size > 0 and str(out / name) in captured.out
    doc = json.loads((out / "prediction.json").read_text())
    assert f"Slide-level prediction: {doc['label']}" in captured.out

    # The view: the slide with saliency painted where the map says, and the saliency legend.
    png = qimage_to_rgb(QImage(str(out / demo.VIEW_PNG)))
    assert str(out / demo.VIEW_PNG) in captured.out and png.std() > 10  # not blank
    slide = showcase_slide().path(demo_cache)
    bare, transform = bare_view(qtbot, tmp_path, slide)
    assert png.shape == bare.shape
    h, w = bare.shape[:2]
    legend = np.zeros((h, w), bool)
    legend[MARGIN : MARGIN + LEGEND_H, w - MARGIN - LEGEND_W : w - MARGIN] = True
    changed = (np.abs(png.astype(int) - bare).max(axis=2) > 20) & ~legend
    # Once the run is done the demo hides saliency below a share of its maximum.
    shown_from = SALIENCY_SHOWN_FROM * float(saliency.max())
    salient = np.nan_to_num(screen_samples(layers["saliency"], transform, (h, w))) >= shown_from
    painted, stray = int(changed.sum()), int((changed & ~grow(salient, 2)).sum())
    assert painted > 200, "no overlay on the slide"
    assert stray <= 0.01 * painted, f"{stray} of {painted} changed pixels lie where the saliency map is hidden"
    core = ~grow(~salient, 2) & ~legend
    assert changed[core].mean() > 0.8, f"only {changed[core].mean():.0%} of the salient pixels are painted"
    lut = lut_rgba("magma")  # the legend: grey below the threshold, then the colormap up to its last colour
    row = png[MARGIN : MARGIN + LEGEND_H, w - MARGIN - LEGEND_W : w - MARGIN][LEGEND_H // 2].astype(int)
    assert np.ptp(row[10]) <= 6 and row[10].mean() > 100 and np.abs(row[-10] - lut[-1, :3]).max() <= 12


def test_window_path_shows_live_maps_then_selects_saliency(qtbot, tmp_path, demo_cache, bundled_model):
    slide = demo.prepare_slide(demo_cache, io.StringIO())
    sigint = signal.getsignal(signal.SIGINT)
    driver = demo.open_demo_window(slide, bundled_model, settings=settings_in(tmp_path), headless=False)
    window = driver.window
    qtbot.addWidget(window)
    patches = []
    window.live.jobs.patch_ready.connect(lambda job, patch: patches.append(patch))
    try:
        with qtbot.waitSignal(driver.run_started, timeout=30_000) as started:
            pass  # the slide opens and the card is read on workers
        job = started.args[0]
        assert job.spec.saliency and job.spec.l0_region is None  # the whole slide, with saliency
        assert job.spec.slide_path == str(slide.resolve()) and job.spec.model_path == str(bundled_model)
        assert window.workspace.current_key == str(slide.resolve())
        assert window.model.path == str(bundled_model)
        assert window.model_panel.card_fields["Classes"].text() == "normal, lesion"
        assert window.inference.saliency and window.model_panel.saliency.isChecked()
        vp = window.view.viewport
        visible = vp.l0_visible_box()
        assert visible.x0 <= 0 and visible.y0 <= 0 and visible.x1 >= vp.l0_width and visible.y1 >= vp.l0_height
        assert min(visible.width / vp.l0_width, visible.height / vp.l0_height) < 1.01  # fitted, not zoomed out further

        qtbot.waitUntil(lambda: bool(patches), timeout=60_000)  # the first live patch
        assert patches[0].generation == job.generation
        assert not driver.saliency_shown and window.live.stack.layers  # the prediction grows first

        qtbot.waitUntil(lambda: driver.saliency_shown, timeout=120_000)
        stack, panel = window.live.stack, window.overlay_panel
        assert stack.active == SALIENCY and panel.current_key == SALIENCY
        assert stack.style_for(SALIENCY).visible and stack.style_for(SALIENCY).threshold == NO_GRADIENT
        assert not any(stack.style_for(k).visible for k in stack.layers if k.source == PREDICTION)
        assert not window.errors
    finally:
        window.shutdown()
        signal.signal(signal.SIGINT, sigint)
