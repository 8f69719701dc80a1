"""Screenshot of the window with a live model overlay on the real slide (offscreen grab), and
the worst event-loop stall while the job runs.

The model is hand-set, not trained: a SmallNet whose class "nuclei" fires where the stain is
dark (haematoxylin-rich nuclei), so the picture shows a map that follows the tissue. It runs
through the real ``engine.api.run_inference`` like any checkpoint.

    python bench/overlay_screenshot.py [SLIDE] [OUT.png]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch  # the benchmark builds the model; the viewer never imports torch
from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication
from torch import nn

from engine.events import MapPatch
from engine.io.checkpoints import ModelCard, save_checkpoint
from engine.models import create_model
from viewer.main_window import MainWindow
from viewer.model.layers import LayerKey
from viewer.workers.inference import engine_runner

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs"
OUT = ROOT / "docs" / "viewer-overlay.png"
CLASSES = ("background", "nuclei")
NUCLEI = LayerKey("prediction", "nuclei")


def dark_stain_detector() -> nn.Module:
    """Channel 0 of every stage carries ReLU(-(R+G+B) - 0.6) on inputs in [-1, 1]: about 0.5
    on dark purple nuclei, 0 on pink stroma and white glass; the head turns its max into a score."""
    net = create_model("smallnet", width=4, num_classes=2, split="stage4", pool="max").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
                m.bias.zero_()
        net.stage1[0].weight[0, :, 1, 1] = torch.tensor([-1.0, -1.0, -1.0])
        net.stage1[1].bias[0] = -0.6
        for stage in (net.stage2, net.stage3, net.stage4):
            stage[0].weight[0, 0, 1, 1] = 1.0
        net.fc.weight.zero_()
        net.fc.weight[1, 0] = 8.0
        net.fc.bias.copy_(torch.tensor([1.0, -1.0]))
    return net


def wait_for(app: QApplication, condition, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("gave up waiting")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


class StampingRunner:
    """The real runner, noting when the engine hands each map patch to the viewer (on the worker)."""

    def __init__(self) -> None:
        self.emitted: list[float] = []

    def __call__(self, spec, on_event, cancel):
        def stamped(event):
            if isinstance(event, MapPatch):
                self.emitted.append(time.perf_counter())
            on_event(event)

        return engine_runner(spec, stamped, cancel)


def main() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    slide = Path(sys.argv[1]) if len(sys.argv) > 1 else SLIDE
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    model_dir = ROOT / ".cache" / "bench" / "dark-stain-model"
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", pool="max", model_kwargs={"width": 4},
                     input_mpp=0.5, tile_size=512, provenance={"made_by": "bench/overlay_screenshot.py", "what": "hand-set dark-stain detector"})
    model = save_checkpoint(model_dir, dark_stain_detector(), card)

    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(ROOT / ".cache" / "bench" / "screenshot-settings.ini"), QSettings.Format.IniFormat)
    runner = StampingRunner()
    window = MainWindow(settings=settings, popups=False, runner=runner)
    window.resize(1600, 1000)
    window.show()
    window.slides.show_or_open(str(slide))
    wait_for(app, lambda: window.workspace.current is not None, 30)
    window.live.load_model(str(model))
    wait_for(app, lambda: window.model.path is not None, 30)
    window.inference.set(device="cpu")
    done = []
    window.live.job_finished.connect(lambda job, fin: done.append(fin))
    ticks: list[float] = []
    probe = QTimer(interval=5)  # the stall probe: the longest gap between its ticks
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start()
    patches = []
    # Patch-to-screen latency: from the engine handing a MapPatch to the viewer (worker thread)
    # to the UI thread emitting patch_ready, which schedules the repaint of that region.
    arrived: list[float] = []
    window.live.jobs.patch_ready.connect(lambda job, patch: (patches.append(patch), arrived.append(time.perf_counter())))
    started = time.perf_counter()
    window.model_panel.slide_button.click()
    wait_for(app, lambda: bool(done), 600)
    probe.stop()
    gaps = sorted(((b - a) * 1000, a - started) for a, b in zip(ticks, ticks[1:], strict=False))  # consecutive pairs
    worst_ms = gaps[-1][0]
    print("worst gaps (ms, at s):", [(round(g), round(t, 2)) for g, t in gaps[-4:]],
          "worst paint ms:", round(max(p[1] for p in window.view.paint_log), 1))
    print(f"whole-slide job: {time.perf_counter() - started:.1f} s, {len(patches)} live patches, "
          f"worst event-loop stall (5 ms probe) {worst_ms:.0f} ms")
    lat = np.array(arrived) - np.array(runner.emitted[:len(arrived)])  # one patch_ready per MapPatch, in order
    print(f"patch-to-screen latency (engine -> UI, ms): p50 {np.median(lat) * 1000:.1f}, "
          f"p95 {np.percentile(lat, 95) * 1000:.1f}, max {lat.max() * 1000:.1f}")
    stack = window.live.stack
    stack.set_style(NUCLEI, colormap="inferno", opacity=0.55, threshold=0.3)
    stack.set_active(NUCLEI)  # the Overlays panel follows
    window.view.set_magnification(5)
    window.view.center_on(1100, 1500)
    wait_for(app, lambda: not window.view.missing_visible_tiles(), 30)
    wait_for(app, lambda: stack.painted, 30)
    loop = QEventLoop()
    QTimer.singleShot(400, loop.quit)
    loop.exec()  # let the settle timer repaint smoothly (app.quit would close the window)
    image = window.grab().toImage()
    image.save(str(out), "PNG")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB); prediction: {window.job_panel.result.text()}")
    window.shutdown()


if __name__ == "__main__":
    main()
