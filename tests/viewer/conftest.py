"""Viewer fixtures. These override the root conftest's fixtures of the same names, which import
the viewer's modules from their paths before the viewer was split into model/, workers/, render/,
widgets/ and controllers/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def garbage_collected_on_the_ui_thread(request):
    """As in the app: with Qt in the test, cycles are collected on the UI thread only (a
    collection on a worker can deadlock Qt; see viewer.workers.gc_pauses)."""
    import gc

    was_enabled = gc.isenabled()
    if "qtbot" in request.fixturenames:
        request.getfixturevalue("qapp")
        from viewer.workers.gc_pauses import collect_on_ui_thread

        collect_on_ui_thread()
        gc.disable()
    else:  # no event loop runs the collector's timer: collect the normal way
        gc.enable()
    yield
    (gc.enable if was_enabled else gc.disable)()


@pytest.fixture
def tile_machinery():
    from viewer.render.tile_cache import TileCache
    from viewer.workers.tiles import TileLoader

    loader = TileLoader(workers=2)
    cache = TileCache(max_bytes=256 * 2**20)
    yield loader, cache
    loader.shutdown()


@pytest.fixture
def slide_view(qtbot, tile_machinery):
    from viewer.render.slide_view import SlideView

    loader, cache = tile_machinery
    view = SlideView(loader, cache)
    qtbot.addWidget(view)
    view.resize(800, 600)
    view.show()
    qtbot.waitExposed(view)
    yield view
    if view.shared is not None:
        view.shared.close_when_idle()


@pytest.fixture
def open_window(qtbot, tmp_path):
    """A factory of shown main windows with their settings in ``tmp_path`` (annotations falling
    back to ``tmp_path/fallback``); every window made is shut down after the test."""
    from PySide6.QtCore import QSettings

    from viewer.main_window import MainWindow

    made = []

    def make(cache_mb: int = 128, size=(1200, 800), **kwargs):
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        settings.setValue("annotations/folder", str(tmp_path / "fallback"))
        win = MainWindow(settings=settings, cache_bytes=cache_mb * 2**20, popups=False, **kwargs)
        qtbot.addWidget(win)
        win.resize(*size)
        win.show()
        qtbot.waitExposed(win)
        made.append(win)
        return win

    yield make
    for win in made:
        win.shutdown()
