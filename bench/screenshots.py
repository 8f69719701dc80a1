"""Screenshots of the viewer for the README, made offscreen with ``QWidget.grab()``.

    .venv/bin/python bench/screenshots.py [SLIDE] [--out docs]

Opens SLIDE (default: the real H&E slide in ../shared/data) in the main window, waits until
every visible tile is sharp, the overview and the label are loaded, and saves the window
fitted and at 20x. PNGs are reduced to a 256-colour palette when needed to stay under 1 MB.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QBuffer, QSettings
from PySide6.QtWidgets import QApplication
from viewer_navigation import run_until  # bench/viewer_navigation.py, beside this script

from viewer.main_window import MainWindow

ROOT = Path(__file__).resolve().parents[1]

MAX_PNG_BYTES = 1_000_000
DEFAULT_SLIDE = ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs"


def save_small_png(window: MainWindow, path: Path) -> None:
    buffer = QBuffer()
    buffer.open(QBuffer.OpenModeFlag.WriteOnly)
    window.grab().toImage().save(buffer, "PNG")
    data = bytes(buffer.data())
    if len(data) > MAX_PNG_BYTES:
        image = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        image.save(out, "PNG", optimize=True)
        data = out.getvalue()
    path.write_bytes(data)
    print(f"saved {path} ({len(data) / 1e3:.0f} kB)")


def settle(window: MainWindow) -> None:
    view = window.view
    run_until(lambda: not view.missing_visible_tiles() and window.loader.pending == 0, 60)
    run_until(lambda: not view.moving, 5)  # the smooth repaint after the last move
    QApplication.processEvents()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", default=str(DEFAULT_SLIDE))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if QApplication.instance() is None:
        QApplication([])  # PySide keeps the application object alive
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "shots.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, popups=False)
    window.resize(1600, 1000)
    window.show()
    window.slides.show_or_open(args.slide)
    run_until(lambda: window.workspace.current is not None, 30)
    run_until(lambda: window.overview.has_thumbnail and window.associated.shown_name is not None, 30)
    settle(window)
    save_small_png(window, out / "viewer-fit.png")
    window.view.set_magnification(20)
    window.view.center_on(1250, 1500)
    window.view.cursor_moved.emit((1250.0, 1500.0))  # a sample status-bar readout in the picture
    settle(window)
    window.properties.search.setText("mpp")
    save_small_png(window, out / "viewer-20x.png")
    window.shutdown()
    window.close()


if __name__ == "__main__":
    main()
