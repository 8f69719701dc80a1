"""Screenshot of an attention head's map on a slide: the main window offscreen (``grab()``).

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/attention_screenshot.py MODEL SLIDE OUT.png

Opens SLIDE, loads MODEL (an attention-head model, e.g. a run of ``bench/resolution.py
--heads attention``), runs it on the whole slide with the tissue mask on and no saliency, shows
only the ``attention`` layer and saves the window. Prints the layer's sum over the tissue (1 for
normalised weights) and its largest weight.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from viewer_navigation import run_until  # bench/viewer_navigation.py, beside this script

from viewer.main_window import MainWindow
from viewer.model.layers import ATTENTION


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("slide")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        win = MainWindow(settings=settings, cache_bytes=256 * 2**20, popups=False)
        win.resize(1600, 1000)
        win.show()
        win.slides.show_or_open(args.slide)
        run_until(lambda: win.workspace.current is not None, 30)
        loaded = []
        win.live.card_loaded.connect(loaded.append)
        win.live.load_model(args.model)
        run_until(lambda: loaded, 60)
        win.live.settings.set(saliency=False, tissue_mask=True)
        done = []
        win.live.job_finished.connect(lambda *a: done.append(a))
        win.live.run("slide")
        run_until(lambda: done, 300)
        stack = win.live.stack
        run_until(lambda: ATTENTION in stack.layers and stack.painted, 30)
        stack.show_only(ATTENTION)
        run_until(lambda: not win.view.missing_visible_tiles(), 30)
        run_until(lambda: False, 0.5)  # let the last paints land
        app.processEvents()
        values = stack.layers[ATTENTION].values.astype(np.float64)
        print(f"attention: sum {np.nansum(values):.6f}, max {np.nanmax(values):.4g}, "
              f"{np.isfinite(values).mean():.0%} of cells computed")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        win.grab().save(str(args.out))
        win.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
