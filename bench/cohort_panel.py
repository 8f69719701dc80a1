"""The Cohort panel's evaluation job and the worst event-loop stall while it runs.

A real ``engine.api.evaluate`` (kept maps on) of a SmallNet over a synthetic labelled cohort,
driven through the main window offscreen: the CSV is imported into the Cohort panel and Evaluate
pressed once the engine is imported on the worker (as a user presses it after loading a model).
The stall probe (a 5 ms timer, as bench/training_screenshot.py and bench/overlay_screenshot.py
measure it) runs from Evaluate to the table being filled; then a row is double-clicked and the time
until its kept maps are on screen is printed. With ``--shot OUT.png`` the window is grabbed after
the run (the grab is not counted).

Usage: ``python bench/cohort_panel.py [--slides 16] [--size 1024] [--shot OUT.png]`` (``--quick``:
4 slides of 192 px, seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # the benchmark builds the model; the viewer never imports torch
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_screenshot import write_slides  # noqa: E402  (the same synthetic benign/tumour slides)

from engine.io.checkpoints import ModelCard, save_checkpoint  # noqa: E402
from engine.models import create_model  # noqa: E402
from viewer.main_window import MainWindow  # noqa: E402
from viewer.workers.gc_pauses import engine_imported  # noqa: E402


def write_cohort(folder: Path, n: int, size: int) -> tuple[Path, Path]:
    slides = write_slides(folder / "slides", n_per_class=max(1, n // 2), size=size, seed=5)
    csv = folder / "slides" / "cohort.csv"
    rows = ["slide,label,patient"] + [f"{s.name},{s.name.split('_')[0]},p{i // 2}" for i, s in enumerate(slides)]
    csv.write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    net = create_model("smallnet", width=8, num_classes=2, split="stage4", pool="max").eval()
    card = ModelCard(architecture="smallnet", classes=("benign", "tumour"), split="stage4", pool="max",
                     model_kwargs={"width": 8}, input_level=0, tile_size=min(512, size),
                     normalization_mean=(0.5,) * 3, normalization_std=(0.25,) * 3)
    return csv, save_checkpoint(folder / "model", net, card)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shot", help="save a screenshot of the window after the run here (png)")
    ap.add_argument("--quick", action="store_true", help="4 slides of 192 px")
    args = ap.parse_args()
    if args.quick:
        args.slides, args.size = 4, 192
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="streamslide-cohort-bench-"))
    csv, model = write_cohort(tmp, args.slides, args.size)

    win = MainWindow(settings=QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat), popups=False)
    win.resize(1500, 950)
    win.show()
    win.show_cohort()
    win.cohort_form.set(out_root=str(tmp / "evaluations"))
    win.cohort.use_csv(str(csv))
    win.live.settings.set(device="cpu")
    win.live.load_model(str(model))  # its card is checked on a worker, and the engine imported

    ticks: list[float] = []
    probe = QTimer(interval=5)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    times: dict[str, float] = {}
    failures: list[str] = []

    def start_when_ready() -> None:
        if not engine_imported() or win.live.model.path is None:
            QTimer.singleShot(50, start_when_ready)
            return
        probe.start()
        times["start"] = time.perf_counter()
        win.cohort_panel.evaluate_button.click()

    def on_results(_files) -> None:
        times["done"] = time.perf_counter()
        probe.stop()
        if args.shot:
            out = Path(args.shot)
            out.parent.mkdir(parents=True, exist_ok=True)
            win.cohort_panel.table_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
            app.processEvents()
            win.grab().save(str(out))
            print(f"saved {out}")
        times["open"] = time.perf_counter()
        win.cohort.open_row(0)

    def on_maps(_slide, _npz) -> None:
        times["maps"] = time.perf_counter()
        QTimer.singleShot(200, app.quit)

    def guarded(fn):
        def call(*a) -> None:
            try:
                fn(*a)
            except Exception as exc:  # a bench that raises in a slot would otherwise hang the loop
                failures.append(repr(exc))
                app.quit()
        return call

    win.cohort.results_shown.connect(guarded(on_results))
    win.cohort.maps_opened.connect(on_maps)
    win.error_reported.connect(lambda m: (failures.append(m), app.quit()))
    QTimer.singleShot(0, start_when_ready)
    app.exec()
    win.shutdown()
    if failures or "done" not in times:
        print("evaluation did not finish:", *failures)
        return 1
    gaps = np.diff(ticks) * 1000
    n = args.slides // 2 * 2
    minutes = (times["done"] - times["start"]) / 60
    print(f"{n} slides of {args.size}² px: {n / minutes:.1f} slides/min through the panel "
          f"({times['done'] - times['start']:.1f} s)")
    print(f"worst event-loop stall during the job: {gaps.max():.1f} ms; p99 {np.percentile(gaps, 99):.1f} ms; "
          f"{int((gaps > 50).sum())} of {len(gaps)} probe intervals over 50 ms")
    if "maps" in times:
        print(f"double-click to kept maps requested: {(times['maps'] - times['open']) * 1000:.0f} ms (no inference job)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
