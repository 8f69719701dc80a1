"""``streamslide`` / ``python -m viewer``: start the desktop viewer, optionally with slides."""

from __future__ import annotations

import argparse
import signal
import sys

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from viewer.main_window import MainWindow
from viewer.workers.gc_pauses import freeze_long_lived


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamslide", description="Browse whole-slide images.")
    parser.add_argument("slides", nargs="*", help="slide files to open (SVS, NDPI, MRXS, SCN, BIF, TIFF, DICOM, PNG, JPEG)")
    parser.add_argument("--cache-mb", type=int, help="decoded-tile cache size in MiB (default: min(25%% of RAM, 2 GiB); remembered)")
    parser.add_argument("--folder", help="show this folder in the slide browser")
    return parser.parse_args(argv)


def application() -> QApplication:
    """The QApplication (made once), named so QSettings finds the viewer's settings."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("StreamSlide")
    app.setOrganizationName("StreamSlide")
    return app


def show_for_user(app: QApplication, window: MainWindow) -> None:
    """Show ``window`` at 95 % of the screen, tied to the application's lifetime: quitting shuts
    its workers down, and Ctrl+C in the terminal closes it the normal way (workers are waited for)."""
    app.aboutToQuit.connect(window.shutdown)
    signal.signal(signal.SIGINT, lambda *_: window.close())
    screen = app.primaryScreen().availableGeometry()
    window.resize(int(screen.width() * 0.95), int(screen.height() * 0.95))
    window.show()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    app = application()
    settings = QSettings("StreamSlide", "viewer")
    if args.cache_mb:
        settings.setValue("cache/max_bytes", args.cache_mb * 2**20)
    window = MainWindow(settings=settings)
    show_for_user(app, window)
    if args.folder:
        window.browser.set_folder(args.folder)
    window.open_paths(args.slides)
    freeze_long_lived()  # start-up objects live as long as the app: keep collections short
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
