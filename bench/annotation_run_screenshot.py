"""Screenshots of a run on a selected annotation and of the *Score against annotations* panel.

    .venv/bin/python bench/annotation_run_screenshot.py [SLIDE] [OUT_DIR]

Opens the slide (default ``../shared/data/CMU-1-Small-Region.svs``) in the real MainWindow
(offscreen), adds a "Region" outline and a smaller "Tumor" outline inside it, selects the
region, runs bench/overlay_screenshot.py's hand-set dark-stain detector (not a trained model)
on *Selection* with saliency, and writes ``selection-run.png`` (the window) and
``score-panel.png`` (the Score dock: the saliency against the Tumor outline) into OUT_DIR.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from overlay_screenshot import CLASSES, ROOT, SLIDE, dark_stain_detector, wait_for  # beside this script
from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from engine.annotations import Annotation
from engine.io.checkpoints import ModelCard, save_checkpoint
from viewer.main_window import MainWindow
from viewer.model.layers import SALIENCY


def outline(cx: float, cy: float, radius: float, lobes: int, n: int = 400) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius * (1 + 0.18 * np.sin(lobes * t + 0.7))
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def settle(ms: int = 400) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def main() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    slide = Path(sys.argv[1]) if len(sys.argv) > 1 else SLIDE
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/work/notes/shots")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", pool="max", model_kwargs={"width": 4},
                     input_mpp=0.5, tile_size=512, provenance={"made_by": "bench/annotation_run_screenshot.py",
                                                               "what": "hand-set dark-stain detector"})
    model = save_checkpoint(tmp / "model", dark_stain_detector(), card)
    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(tmp / "shot.ini"), QSettings.Format.IniFormat)
    settings.setValue("annotations/folder", str(tmp / "annotations"))
    window = MainWindow(settings=settings, popups=False)
    window.resize(1600, 1000)
    window.show()
    work_slide = tmp / slide.name
    work_slide.symlink_to(slide.resolve())  # its sidecar autosaves into tmp (a symlink's own folder)
    window.slides.show_or_open(str(work_slide))
    wait_for(app, lambda: window.annotations.document is not None, 30)
    wait_for(app, lambda: window.annotation_runner.pending == 0, 30)
    window.live.load_model(str(model))
    wait_for(app, lambda: window.model.path is not None, 30)
    window.inference.set(device="cpu", saliency=True)
    doc = window.annotations.document
    doc.add([Annotation.polygon(outline(1150, 1450, 620, 5), class_name="Region", name="run here"),
             Annotation.polygon(outline(1000, 1350, 220, 3), class_name="Tumor", name="expert outline")])
    doc.select([0])
    done = []
    window.live.job_finished.connect(lambda job, fin: done.append(fin))
    window.model_panel.selection_button.click()
    wait_for(app, lambda: bool(done), 600)
    stack = window.live.stack
    wait_for(app, lambda: SALIENCY in stack.layers, 30)
    stack.set_style(SALIENCY, colormap="inferno", opacity=0.6)
    stack.show_only(SALIENCY)
    window.view.set_magnification(5)
    window.view.center_on(1150, 1450)
    window.score_dock.show()
    window.score_dock.raise_()
    wait_for(app, lambda: not window.view.missing_visible_tiles(), 30)
    wait_for(app, lambda: stack.painted, 30)
    wait_for(app, lambda: window.scoring.last is not None and window.scoring.last["layer"] == "saliency", 30)
    settle()
    window.grab().toImage().save(str(out / "selection-run.png"), "PNG")
    window.score_dock.grab().toImage().save(str(out / "score-panel.png"), "PNG")
    values = stack.layers[SALIENCY].values
    print(f"run: cancelled={done[0].cancelled}, saliency cells computed {int(np.isfinite(values).sum())} of {values.size}")
    print("scores:", {k: window.scoring.last[k] for k in ("layer", "class", "mass_inside", "even_share", "pixel_auc",
                                                           "cells", "cells_inside")})
    print(f"wrote {out / 'selection-run.png'} and {out / 'score-panel.png'}")
    window.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    main()
