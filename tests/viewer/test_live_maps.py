"""Live model maps in the main window, driven through its panels with a fake engine runner
(same signature and events as ``engine.api.run_inference``): live patches painted over the
slide, cancel, queueing, errors, region drawing, the readout, PNG export with the legend, maps
files, and the worst event-loop stall. (The controller alone: test_live_maps_controller.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fake_engine import CLASSES, FakeRunner, cell_value
from PySide6.QtCore import QPoint, QSettings, Qt, QTimer
from PySide6.QtGui import QImage

from engine.colormaps import lut_rgba
from engine.geometry import Box
from engine.io.checkpoints import ModelCard, build_model, save_checkpoint
from engine.io.svs import write_svs_array
from tests.conftest import block_colour
from viewer.model.layers import SALIENCY, LayerKey
from viewer.render.legend import LEGEND_H, LEGEND_W, MARGIN
from viewer.workers.images import qimage_to_rgb

TUMOUR = LayerKey("prediction", "tumour")


@pytest.fixture
def model_path(tmp_path):
    """A model on disk (the fake runner never runs it, but choosing a model checks its weights)."""
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", input_mpp=0.5, tile_size=512,
                     model_kwargs={"width": 4}, provenance={"made_by": "tests/test_live_maps.py"})
    return str(save_checkpoint(tmp_path / "model", build_model(card), card))


def make_window(qtbot, tmp_path, runner):
    from viewer.main_window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, cache_bytes=128 * 2**20, popups=False, runner=runner)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def gate():
    gate = threading.Event()
    yield gate
    gate.set()  # never leave a worker parked on it


@pytest.fixture
def runner(gate):
    return FakeRunner(gate=gate)


@pytest.fixture
def window(qtbot, tmp_path, runner):
    win = make_window(qtbot, tmp_path, runner)
    yield win
    win.shutdown()


def open_slide(qtbot, window, path):
    with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
        window.slides.show_or_open(str(path))
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)


def load_model(qtbot, window, model_path):
    with qtbot.waitSignal(window.live.card_loaded, timeout=10_000):
        window.model_panel.model_chosen.emit(model_path)


def tumour_layer(window):
    return window.live.stack.layers.get(TUMOUR)


def test_model_card_is_shown_and_remembered(qtbot, window, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    panel = window.model_panel
    assert not panel.slide_button.isEnabled()
    load_model(qtbot, window, model_path)
    assert panel.card_fields["Architecture"].text() == "smallnet"
    assert panel.card_fields["Classes"].text() == "normal, tumour"
    assert panel.card_fields["Input"].text() == "0.5 µm/px" and panel.card_fields["Tile size"].text() == "512 px"
    assert "test_live_maps" in panel.card_fields["From"].text()
    assert panel.slide_button.isEnabled() and panel.view_button.isEnabled()
    assert panel.recent.itemData(0) == str(__import__("pathlib").Path(model_path).resolve())
    assert window.settings.value("recent_models")[0].endswith("model.json")
    assert panel.status.text().replace("\u200b", "") == f"Loaded {model_path}" and window.model.path == model_path


def test_bad_model_is_reported_and_the_slide_stays_open(qtbot, window, synthetic_slide_path, tmp_path):
    open_slide(qtbot, window, synthetic_slide_path)
    bad = tmp_path / "broken" / "model.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with qtbot.waitSignal(window.error_reported, timeout=10_000) as blocker:
        window.model_panel.model_chosen.emit(str(bad))
    assert "model.json" in blocker.args[0] and "JSON" in blocker.args[0]
    assert window.workspace.current_key == str(synthetic_slide_path.resolve()) and window.model.path is None
    assert window.model_panel.status.text().startswith("Could not load the model:")


def test_patches_show_live_before_the_job_finishes(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    finished = []
    window.live.job_finished.connect(lambda job, fin: finished.append(fin))
    window.model_panel.slide_button.click()
    # The runner holds after its first patch: what shows now arrived live.
    qtbot.waitUntil(lambda: tumour_layer(window) is not None, timeout=10_000)
    layer = tumour_layer(window)
    assert not finished and window.live.jobs.running is not None
    assert window.job_panel.cancel_button.isEnabled()
    assert layer.value_at(10, 10) == pytest.approx(cell_value(0, 0))
    assert layer.value_at(2000, 2000) is None
    # The first block (level-0 0..256) is painted with the tumour map over the slide.
    window.view.set_magnification(10)
    window.view.center_on(128, 128)
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    rgb = qimage_to_rgb(window.view.grab().toImage())
    sx, sy = window.view.viewport.transform().to_screen(64 * 2 + 32, 64 * 1 + 32)  # cell (1, 2)
    lut = lut_rgba("viridis")[int(cell_value(1, 2) * 255 + 0.5), :3]
    expected = 0.5 * lut + 0.5 * np.array(block_colour(160, 96))
    assert np.abs(rgb[int(sy), int(sx)] - expected).max() <= 3
    gate.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=20_000)
    assert not finished[0].cancelled and runner.patches_sent > 1
    assert np.isfinite(layer.values).all()
    assert "tumour" in window.job_panel.result.text() and "Done" in window.job_panel.detail.text()


def test_cancel_stops_the_job_and_a_second_run_works(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    with qtbot.waitSignal(window.live.job_started, timeout=10_000):
        window.model_panel.slide_button.click()
    qtbot.waitUntil(lambda: runner.patches_sent == 1, timeout=10_000)
    with qtbot.waitSignal(window.live.job_finished, timeout=10_000) as blocker:
        window.job_panel.cancel_button.click()
        gate.set()
    assert blocker.args[1].cancelled and runner.patches_sent < 12 * 16
    assert "Cancelled" in window.job_panel.detail.text()
    with qtbot.waitSignal(window.live.job_finished, timeout=20_000) as blocker:
        window.model_panel.view_button.click()
    assert not blocker.args[1].cancelled
    assert np.isfinite(tumour_layer(window).values).all()  # the view is covered by the new map


def test_jobs_on_other_slides_wait_in_the_queue(qtbot, window, gate, runner, synthetic_slide_path, model_path, tmp_path):
    second = write_svs_array(tmp_path / "second.svs", np.full((1024, 1024, 3), (30, 160, 160), np.uint8), downsamples=(1, 4))
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    first_job = window.live.run("slide")
    qtbot.waitUntil(lambda: runner.patches_sent == 1, timeout=10_000)
    open_slide(qtbot, window, second)
    second_job = window.live.run("view")
    assert first_job.state == "running" and second_job.state == "queued"
    assert "1 job waiting" in window.job_panel.queue.text()
    assert len(runner.calls) == 1  # the second has not reached the device
    order = []
    window.live.job_finished.connect(lambda job, fin: order.append(job.job_id))
    gate.set()
    qtbot.waitUntil(lambda: len(order) == 2, timeout=20_000)
    assert order == [first_job.job_id, second_job.job_id]
    assert [c.slide_path for c in runner.calls] == [str(synthetic_slide_path.resolve()), str(second.resolve())]
    # Each slide keeps its own maps.
    assert window.live.stacks[str(second.resolve())].layers[TUMOUR].geometry.l0_box.x1 <= 1024


def test_a_new_run_on_the_same_slide_supersedes_the_old_one(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    first = window.live.run("slide")
    qtbot.waitUntil(lambda: runner.patches_sent == 1, timeout=10_000)
    window.view.set_magnification(5)
    second = window.live.run("view")
    assert first.token.cancelled and first.superseded
    with qtbot.waitSignal(window.live.job_finished, timeout=20_000, check_params_cb=lambda job, fin: job is second):
        gate.set()
    stack = window.live.stack
    assert stack.generation == second.generation
    vp = window.view.viewport
    box = tumour_layer(window).geometry.l0_box
    assert box.x0 >= vp.l0_visible_box().x0 - 1 and box.x1 <= vp.l0_visible_box().x1 + 64


@pytest.mark.parametrize("kind", ["model", "slide"])
def test_runner_errors_are_reported_and_open_slides_kept(qtbot, tmp_path, synthetic_slide_path, model_path, kind):
    window = make_window(qtbot, tmp_path, FakeRunner(fail=kind))
    try:
        open_slide(qtbot, window, synthetic_slide_path)
        load_model(qtbot, window, model_path)
        with qtbot.waitSignal(window.error_reported, timeout=10_000) as blocker:
            window.live.run("slide")
        assert ("not a StreamSlide model" if kind == "model" else "could not be read") in blocker.args[0]
        assert "Failed" in window.job_panel.detail.text() and not window.job_panel.cancel_button.isEnabled()
        assert window.workspace.current_key == str(synthetic_slide_path.resolve()) and len(window.workspace.slides) == 1
        window.view.zoom_by(2)
        qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    finally:
        window.shutdown()


def test_shift_drag_runs_on_the_drawn_rectangle(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    gate.set()
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    view = window.view
    t = view.viewport.transform()
    a, b = (QPoint(*(int(v) for v in t.to_screen(*l0))) for l0 in ((1000, 900), (2000, 1600)))
    with qtbot.waitSignal(window.live.job_finished, timeout=20_000):
        qtbot.mousePress(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, a)
        qtbot.mouseMove(view, b)
        qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, b)
    x0, y0, x1, y1 = Box.of(runner.calls[-1].l0_region).as_tuple()
    ax, ay = t.to_l0(a.x(), a.y())
    bx, by = t.to_l0(b.x(), b.y())
    assert abs(x0 - ax) <= 1 and abs(y0 - ay) <= 1 and abs(x1 - bx) <= 1 and abs(y1 - by) <= 1
    assert view.viewport.transform() == t  # drawing did not pan
    assert not window.inference.region_mode and not view.region_mode


def test_draw_region_button_arms_the_view_and_the_rectangle_runs(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    gate.set()
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    window.model_panel.region_button.click()
    view = window.view
    assert window.inference.region_mode and view.region_mode  # the next drag draws, not pans
    t = view.viewport.transform()
    a, b = (QPoint(*(round(v) for v in t.to_screen(*l0))) for l0 in ((500, 400), (900, 800)))
    with qtbot.waitSignal(window.live.job_finished, timeout=20_000):
        qtbot.mousePress(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, a)
        qtbot.mouseMove(view, b)
        qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, b)
    assert not window.model_panel.region_button.isChecked() and not view.region_mode
    x0, y0, x1, y1 = Box.of(runner.calls[-1].l0_region).as_tuple()
    # The mouse lands on whole screen pixels: the box is the drawn one to within one screen
    # pixel (in level-0 px, the view's scale decides how many that is) and the box's rounding.
    screen_px = 1 / view.viewport.scale
    assert abs(x0 - 500) <= screen_px + 1 and abs(y1 - 800) <= screen_px + 1


def test_readout_export_png_with_legend_and_maps_round_trip(qtbot, window, gate, synthetic_slide_path, model_path, tmp_path):
    gate.set()
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    with qtbot.waitSignal(window.live.job_finished, timeout=20_000):
        window.live.run("slide")
    live = window.live
    window.overlay_panel.opacity.setValue(100)  # through the panel, as a user would
    assert tumour_layer(window).style.opacity == 1.0
    # Value readout under the cursor.
    view = window.view
    sx, sy = view.viewport.transform().to_screen(64 * 5 + 10, 64 * 3 + 10)
    qtbot.mouseMove(view, QPoint(int(sx), int(sy)))
    qtbot.waitUntil(lambda: "tumour" in window.readout.text())
    assert f"tumour {cell_value(3, 5):.3g}" in window.readout.text() and "normal" not in window.readout.text()

    png = tmp_path / "view.png"
    with qtbot.waitSignal(window.slides.export_done, timeout=20_000):
        window.export_view(str(png), 1)
    rgb = qimage_to_rgb(QImage(str(png)))
    w = rgb.shape[1]
    # The overlay: a map cell painted in its colormap colour (opacity 1).
    px, py = view.viewport.transform().to_screen(64 * 20 + 32, 64 * 20 + 32)
    lut = lut_rgba("viridis")
    assert np.abs(rgb[int(py), int(px)].astype(int) - lut[int(cell_value(20, 20) * 255 + 0.5), :3]).max() <= 2
    # The legend in the top-right corner: its gradient runs from the colormap's first colour to its last.
    legend = rgb[MARGIN : MARGIN + LEGEND_H, w - MARGIN - LEGEND_W : w - MARGIN]
    row = legend[LEGEND_H // 2]
    assert np.abs(row[10].astype(int) - lut[0, :3]).max() <= 12 and np.abs(row[-10].astype(int) - lut[-1, :3]).max() <= 12

    with qtbot.waitSignal(live.maps_written, timeout=30_000) as blocker:
        live.export_maps(str(tmp_path / "maps"))
    written = blocker.args[0]
    assert {"maps_npz", "prediction_json"} <= set(written)
    saved = tumour_layer(window).values.copy()
    with qtbot.waitSignal(live.maps_loaded, timeout=30_000):
        live.load_maps(written["maps_npz"])
    reloaded = tumour_layer(window)
    np.testing.assert_array_equal(reloaded.values, saved)
    assert reloaded.geometry.l0_box.x1 == 4096
    qtbot.waitUntil(lambda: not reloaded.recolour_in_flight and not reloaded.needs_recolour, timeout=10_000)
    assert (reloaded.bgra[..., 3] == 255).all()


def test_worst_event_loop_stall_during_a_job_is_small(qtbot, tmp_path, synthetic_slide_path, model_path):
    # 16-px cells in 2x2-cell patches: 256 x 192 cells in 12,288 patches of three layers each.
    runner = FakeRunner(l0_cell=16, block_cells=2)
    window = make_window(qtbot, tmp_path, runner)
    try:
        open_slide(qtbot, window, synthetic_slide_path)
        load_model(qtbot, window, model_path)
        ticks: list[float] = []
        probe = QTimer(interval=5)
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        probe.start()
        with qtbot.waitSignal(window.live.job_finished, timeout=120_000):
            window.live.run("slide")
        probe.stop()
        worst_ms = max(np.diff(ticks)) * 1000
        print(f"\nworst event-loop stall during a job of {runner.patches_sent} patches: {worst_ms:.1f} ms")
        assert runner.patches_sent == 96 * 128 and np.isfinite(window.live.stack.layers[SALIENCY].values).all()
        # A bound for gross regressions only (one queued signal per patch stalled 3.7 s here): the
        # scheduler of a loaded 2-core machine alone can add hundreds of ms. The benchmark prints
        # the real figure.
        assert worst_ms < 1500
    finally:
        window.shutdown()


def test_whole_slide_runs_start_where_the_user_looks(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    window.view.set_magnification(10)
    window.view.center_on(700, 500)
    vis = window.view.viewport.l0_visible_box()
    window.model_panel.slide_button.click()
    qtbot.waitUntil(lambda: bool(runner.calls), timeout=10_000)
    assert runner.calls[-1].l0_region is None  # the whole slide (the engine takes the tissue box)
    assert Box.of(runner.calls[-1].priority_l0_box).as_tuple() == pytest.approx(vis.as_tuple())
    assert runner.calls[-1].low_memory is False
    gate.set()
    window.live.cancel()


def test_the_panels_options_reach_the_job(qtbot, window, gate, runner, synthetic_slide_path, model_path):
    open_slide(qtbot, window, synthetic_slide_path)
    load_model(qtbot, window, model_path)
    panel = window.model_panel
    panel.low_memory.setChecked(True)
    panel.saliency.setChecked(False)
    panel.device.setCurrentText("cpu")
    assert (window.inference.low_memory, window.inference.saliency, window.inference.device) == (True, False, "cpu")
    gate.set()
    with qtbot.waitSignal(window.live.jobs.job_finished, timeout=10_000):
        panel.view_button.click()
    spec = runner.calls[-1]
    assert spec.low_memory is True and spec.saliency is False and spec.device == "cpu"
    window.inference.set(saliency=True)  # a controller's change shows in the panel
    assert panel.saliency.isChecked()
