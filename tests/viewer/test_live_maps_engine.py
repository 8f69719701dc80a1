"""The real ``engine.api.run_inference`` behind the viewer: a hand-set green detector on a
small synthetic slide; its maps must light up over the green squares in the window."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from model_fixtures import GREEN_BOXES, save_green_detector, write_test_slide
from PySide6.QtCore import QSettings

from viewer.model.layers import SALIENCY, LayerKey


def test_viewer_modules_never_import_torch():
    """Importing every viewer module (the UI thread's imports) loads no torch: the engine's torch
    parts are imported by jobs, on workers."""
    code = ("import importlib, pkgutil, sys, viewer\n"
            "for m in pkgutil.walk_packages(viewer.__path__, 'viewer.'):\n"
            "    if m.name != 'viewer.__main__': importlib.import_module(m.name)\n"
            "assert 'viewer.controllers.live_maps' in sys.modules and 'viewer.workers.inference' in sys.modules\n"
            "assert 'torch' not in sys.modules, 'the viewer imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_real_engine_maps_show_over_the_green_squares(qtbot, tmp_path):
    from viewer.main_window import MainWindow

    slide = write_test_slide(tmp_path / "green.svs")
    model = save_green_detector(tmp_path / "model")
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, cache_bytes=64 * 2**20, popups=False)
    qtbot.addWidget(window)
    window.resize(1200, 800)
    window.show()
    try:
        with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
            window.slides.show_or_open(str(slide))
        with qtbot.waitSignal(window.live.card_loaded, timeout=10_000):
            window.live.load_model(str(model))
        window.inference.set(device="cpu")
        patches = []
        window.live.jobs.patch_ready.connect(lambda job, patch: patches.append(patch))
        with qtbot.waitSignal(window.live.job_finished, timeout=120_000) as blocker:
            window.model_panel.slide_button.click()
        assert not blocker.args[1].cancelled and not window.errors
        assert len(patches) > 1
        stack = window.live.stack
        green = stack.layers[LayerKey("prediction", "green")]
        (x0, y0, x1, y1) = GREEN_BOXES[0]
        assert green.value_at((x0 + x1) / 2, (y0 + y1) / 2) > 0.9
        assert green.value_at(900, 700) < 0.2  # off green: softmax of the biases alone, 0.12
        saliency = stack.layers[SALIENCY]
        inside = saliency.value_at((x0 + x1) / 2, (y0 + y1) / 2)
        assert inside is not None and np.isfinite(saliency.values).any()
        assert "green" in window.job_panel.result.text()
    finally:
        window.shutdown()
