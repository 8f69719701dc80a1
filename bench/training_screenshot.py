"""Screenshot of the training panel mid-run (docs/training-panel.png) and the worst event-loop stall.

A real ``run_training`` (SmallNet, tiny synthetic slides labelled in the slide browser) driven
through the main window offscreen, with "Update saliency each epoch" on; the window is grabbed
after the third validation. The stall probe (a 5 ms timer) runs from Start to the end of the run,
Start being pressed once the panel's engine warm-up has finished; the grab is not counted. Usage: ``python bench/training_screenshot.py [OUT.png] [--no-saliency]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from engine.io.svs import write_svs_array
from viewer.main_window import MainWindow
from viewer.workers.gc_pauses import engine_imported

GLASS, TISSUE, LESION = (235, 235, 235), (170, 110, 180), (10, 10, 50)


def write_slides(folder: Path, n_per_class: int, size: int, seed: int) -> list[Path]:
    """Purple "tissue" with a little texture on grey glass; the "tumour" slides also hold one small
    dark-blue square, so only a local detector tells the classes apart (as in the training tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for label in ("benign", "tumour"):
        for i in range(n_per_class):
            rgb = np.empty((size, size, 3), np.uint8)
            rgb[:] = GLASS
            m = size // 16
            noise = rng.integers(-12, 13, (size - 2 * m, size - 2 * m, 1))
            rgb[m:size - m, m:size - m] = np.clip(np.asarray(TISSUE) + noise, 0, 255).astype(np.uint8)
            if label == "tumour":
                y, x = rng.integers(2 * m, size - 2 * m - 12, 2)
                rgb[y:y + 12, x:x + 12] = LESION
            paths.append(write_svs_array(folder / f"{label}_{i}.svs", rgb, mpp=0.5, app_mag=20, tile=128, downsamples=(1,)))
    return [Path(p) for p in paths]


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0] if args else "docs/training-panel.png")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication([])

    tmp = Path(tempfile.mkdtemp(prefix="streamslide-train-shot-"))
    slides = write_slides(tmp / "slides", n_per_class=4, size=192, seed=3)
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("training/runs_folder", str(tmp / "runs"))
    win = MainWindow(settings=settings, popups=False)
    win.resize(1600, 1000)
    win.show()
    app.processEvents()
    win.show_training()
    ft = win.training
    win.training_form.advanced = {"model_kwargs": {"width": 8}, "normalization_mean": (0.5, 0.5, 0.5),
                                  "normalization_std": (0.25, 0.25, 0.25)}
    p = win.training_view.panel  # filled through its widgets, as a user would
    p.model.setCurrentText("smallnet")
    p.input_by.setCurrentText("level")
    p.input_value.setValue(0)
    p.input_size.setValue(192)
    p.tile_size.setValue(96)
    p.epochs.setValue(8)
    p.lr.setValue(3e-3)
    p.device.setCurrentText("cpu")
    p.update_saliency.setChecked("--no-saliency" not in sys.argv)

    win.browser.set_folder(slides[0].parent)
    for label in ("benign", "tumour"):
        win.labeller.set_label([str(s) for s in slides if s.name.startswith(label)], label)
    win.slides.show_or_open(str(slides[0].parent / "tumour_1.svs"))

    ticks: list[float] = []
    probe = QTimer(interval=5)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    state = {"shot": False}

    def grab() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        ticks.append(float("nan"))  # the grab is this script's work, not the viewer's: no gap across it
        win.grab().save(str(out))
        ticks.append(float("nan"))
        state["shot"] = True
        print(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB)")

    def on_metrics(run, m) -> None:
        if m.phase == "val" and m.epoch == 3 and not state["shot"]:
            QTimer.singleShot(1500, grab)  # let that epoch's saliency map arrive

    ft.jobs.metrics.connect(on_metrics)
    ft.run_finished.connect(lambda *_: app.quit())
    ft.run_failed.connect(lambda *_: app.quit())
    # Opening the panel imports the engine on the training worker (torch holds the GIL for
    # stretches of it); a user presses Start after setting the run up, so the probe starts then.
    t_open = time.perf_counter()

    def start_when_warm() -> None:
        if not engine_imported():
            QTimer.singleShot(50, start_when_warm)
            return
        print(f"engine imported on the worker {time.perf_counter() - t_open:.1f} s after the panel opened")
        probe.start()
        QTimer.singleShot(100, p.start_button.click)

    QTimer.singleShot(0, start_when_warm)
    app.exec()
    probe.stop()
    gaps = np.diff(ticks) * 1000
    gaps = gaps[np.isfinite(gaps)]
    print(f"worst event-loop stall during the run: {gaps.max():.1f} ms; p99 {np.percentile(gaps, 99):.1f} ms; "
          f"{int((gaps > 50).sum())} of {len(gaps)} probe intervals over 50 ms")
    win.shutdown()
    return 0 if state["shot"] else 1


if __name__ == "__main__":
    sys.exit(main())
