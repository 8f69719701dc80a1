"""Opening, showing and closing slides, their overview and associated images, and exporting the
view: every slide read runs on a worker and comes back to a bound method on the UI thread.

The controller keeps the :class:`~viewer.model.workspace.Workspace` (which slides are open and
shown); widgets follow the workspace's notifications and this controller's signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from engine.slides import SlideSource
from viewer.model.workspace import Workspace, resolved
from viewer.render.tile_cache import TileCache
from viewer.workers import export
from viewer.workers.background import BackgroundRunner
from viewer.workers.slide_jobs import make_overview_image, open_job, read_associated_image
from viewer.workers.sources import SharedSource

OVERVIEW_PX = 512
#: The message shown while a slide opens, and how long a transient message stays (ms).
MESSAGE_MS = 15_000


class SlidesController(QObject):
    slide_opened = Signal(str)
    slide_shown = Signal(str)
    #: A slide opened, before it is shown: its folder (the slide browser shows it if it shows none).
    opened_in_folder = Signal(str)
    overview_ready = Signal(object)  # QImage of the shown slide
    associated_ready = Signal(str, object)  # name, QImage
    associated_failed = Signal(str)
    export_done = Signal(str)
    status_message = Signal(str, int)  # text, milliseconds (0: until replaced)

    def __init__(self, workspace: Workspace[SharedSource], runner: BackgroundRunner, cache: TileCache,
                 report_error: Callable[[str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workspace, self.runner, self.cache, self.report_error = workspace, runner, cache, report_error
        self._shut = False

    # -- opening ------------------------------------------------------------------------
    def show_or_open(self, path: str) -> None:
        """Show ``path`` if it is open, else open it on a worker (``slide_opened`` when done)."""
        key = resolved(path)
        if key in self.workspace.slides:
            self.show(key)
        elif self.workspace.begin_opening(key):
            self.status_message.emit(f"Opening {Path(key).name}…", 0)
            self.runner.submit(open_job, key, on_done=self._on_opened, on_error=self.report_error)

    def _on_opened(self, result: tuple[str, SlideSource | None, str | None]) -> None:
        key, source, error = result
        if error is not None:
            self.workspace.open_failed(key)
            self.report_error(f"Could not open the slide.\n\n{error}")
            return
        if self._shut:
            self.workspace.abandon(key)
            source.close()
            return
        self.status_message.emit("", 0)
        self.workspace.add(key, SharedSource(source))
        self.opened_in_folder.emit(str(Path(key).parent))
        self.show(key)
        self.slide_opened.emit(key)

    def show(self, key: str) -> None:
        """Show the open slide ``key`` (its overview is made on a worker)."""
        if not self.workspace.show(key):
            return
        entry = self.workspace.current
        self.runner.submit(make_overview_image, entry.shared, OVERVIEW_PX, on_done=self._on_overview, on_error=self._on_overview_failed)
        self.slide_shown.emit(key)

    def close_current(self) -> None:
        entry = self.workspace.close_current()
        if entry is None:
            return
        self.cache.drop_slide(entry.shared.slide_id)
        entry.shared.close_when_idle()  # the last worker inside it closes it; never blocks here
        if self.workspace.slides:
            self.show(next(iter(self.workspace.slides)))

    # -- results from workers -------------------------------------------------------------
    def _is_shown(self, slide_id: int) -> bool:
        entry = self.workspace.current
        return entry is not None and entry.shared.slide_id == slide_id

    def _on_overview(self, result: tuple[int, QImage]) -> None:
        slide_id, image = result
        if self._is_shown(slide_id):
            self.overview_ready.emit(image)

    def _on_overview_failed(self, message: str) -> None:
        # The same damage shows in the view and is reported there once; say it quietly here.
        self.status_message.emit(f"No overview: {message}", MESSAGE_MS)

    def request_associated(self, name: str) -> None:
        entry = self.workspace.current
        if entry is not None:
            self.runner.submit(read_associated_image, entry.shared, name, on_done=self._on_associated,
                               on_error=self.associated_failed.emit)

    def _on_associated(self, result: tuple[int, str, QImage]) -> None:
        slide_id, name, image = result
        if self._is_shown(slide_id):
            self.associated_ready.emit(name, image)

    # -- export ---------------------------------------------------------------------------
    def export_view(self, path: str, factor: int, screen_image: Callable[[], QImage]) -> None:
        """Save the view as PNG (``export_done`` when written). ``factor`` 1 is what the screen
        shows (``screen_image()``, overlays included); 2 or 4 re-reads the slide at that many
        times the pixels."""
        entry = self.workspace.current
        if entry is None:
            return
        if factor == 1:
            self.runner.submit(export.save_png, screen_image(), path, on_done=self.export_done.emit, on_error=self.report_error)
            return
        vp = entry.viewport
        self.runner.submit(export.export_region_png, entry.shared, vp.l0_visible_box(), vp.screen_w * factor,
                           vp.screen_h * factor, path, on_done=self.export_done.emit, on_error=self.report_error)

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Close every slide once no worker reads it (the runner is shut down by its owner)."""
        self._shut = True
        for entry in self.workspace.clear():
            entry.shared.close_when_idle()
