"""The main window: composition only. Docks, menus, toolbar and status bar around a
:class:`SlideView`; every slide read runs on a worker and comes back through a callback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QImage, QKeySequence
from PySide6.QtWidgets import QComboBox, QDockWidget, QFileDialog, QInputDialog, QLabel, QMainWindow, QMessageBox, QWidget

from engine.geometry import Box
from engine.errors import SlideError
from engine.slides import SlideSource, open_slide
from viewer import export
from viewer.background import BackgroundRunner
from viewer.fine_tuning import FineTuning
from viewer.gc_pauses import collect_on_ui_thread
from viewer.images import array_to_qimage
from viewer.jobs import Runner, engine_runner
from viewer.live_maps import LiveMaps
from viewer.slide_view import SlideView
from viewer.sources import SharedSource
from viewer.state import MAGNIFICATION_PRESETS, RecentFiles, Viewport, available_presets, format_length_um
from viewer.tiles import TileCache, TileLoader, default_cache_bytes
from viewer.training import TrainRunner, engine_train_runner
from viewer.widgets.associated_images import AssociatedImagesPanel
from viewer.widgets.overview import OverviewWidget
from viewer.widgets.properties_panel import PropertiesPanel
from viewer.widgets.slide_browser import SlideBrowser

OVERVIEW_PX = 512
FILE_FILTER = "Slides and images (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.bif *.svslide *.dcm *.png *.jpg *.jpeg *.bmp);;All files (*)"
EXPORT_CHOICES = {"Screen resolution": 1, "2x screen resolution": 2, "4x screen resolution": 4}


@dataclass
class OpenSlideEntry:
    """One open slide: its shared source and the viewport to restore when switching back."""

    shared: SharedSource
    viewport: Viewport | None = None


def open_job(path: str) -> tuple[str, SlideSource | None, str | None]:
    """Worker job: open a slide; a failure comes back as a message, tagged with its path."""
    try:
        return path, open_slide(path), None
    except SlideError as exc:
        return path, None, str(exc)


def make_overview_image(shared: SharedSource, max_px: int) -> tuple[int, QImage]:
    """Worker job: the slide's thumbnail as a QImage, tagged with the slide id."""
    with shared as source:
        return shared.slide_id, array_to_qimage(source.thumbnail(max_px))


def read_associated_image(shared: SharedSource, name: str) -> tuple[int, str, QImage]:
    with shared as source:
        return shared.slide_id, name, array_to_qimage(source.associated_image(name))


class MainWindow(QMainWindow):
    slide_opened = Signal(str)
    slide_shown = Signal(str)
    overview_ready = Signal()
    export_done = Signal(str)
    error_reported = Signal(str)

    def __init__(self, *, settings: QSettings | None = None, cache_bytes: int | None = None, popups: bool = True,
                 runner: Runner = engine_runner, train_runner: TrainRunner = engine_train_runner) -> None:
        super().__init__()
        collect_on_ui_thread()  # a collection on a worker can deadlock Qt (see viewer.gc_pauses)
        self.setWindowTitle("StreamSlide")
        self.settings = settings or QSettings("StreamSlide", "viewer")
        self.popups = popups
        self.errors: list[str] = []
        self.slides: dict[str, OpenSlideEntry] = {}
        self.current_path: str | None = None
        self._opening: set[str] = set()
        self._shut = False
        cache_bytes = cache_bytes or int(self.settings.value("cache/max_bytes", default_cache_bytes()))
        self.runner = BackgroundRunner(workers=1, parent=self)
        self.loader = TileLoader(parent=self)
        self.cache = TileCache(cache_bytes)
        self.recent = RecentFiles(list(self.settings.value("recent_files", []) or []))

        self.view = SlideView(self.loader, self.cache)
        self.setCentralWidget(self.view)
        self.overview = OverviewWidget()
        self.browser = SlideBrowser(self.runner)
        self.properties = PropertiesPanel()
        self.associated = AssociatedImagesPanel()
        left = [self._dock("Overview", self.overview, Qt.DockWidgetArea.LeftDockWidgetArea),
                self._dock("Slide browser", self.browser, Qt.DockWidgetArea.LeftDockWidgetArea)]
        # Model maps: the panels live in LiveMaps; the window only docks them.
        self.live = LiveMaps(self.view, self.report_error, self.settings, runner=runner, parent=self)
        right = [self._dock("Model", self.live.model_widget, Qt.DockWidgetArea.RightDockWidgetArea),
                 self._dock("Overlays", self.live.overlay_panel, Qt.DockWidgetArea.RightDockWidgetArea),
                 self._dock("Properties", self.properties, Qt.DockWidgetArea.RightDockWidgetArea),
                 self._dock("Associated images", self.associated, Qt.DockWidgetArea.RightDockWidgetArea)]
        # Model, Properties and Associated images share one tab group, so the view keeps its width
        # and the docks their height; the overlay controls stay visible beside the slide.
        self.tabifyDockWidget(right[0], right[2])
        self.tabifyDockWidget(right[0], right[3])
        right[0].raise_()
        # Fine-tuning: wide curves need the bottom area; hidden until asked for (Model ▸ Train).
        self.training = FineTuning(self.live, self.browser, self.report_error, self.settings, train_runner, parent=self)
        self.training_dock = self._dock("Training", self.training.widget, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.training_dock.hide()
        # The right column's docks are tall: the training dock spans the view and the left column only.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks(left + right[:2], [300, 300, 380, 380], Qt.Orientation.Horizontal)
        self.position_label = QLabel()
        self.zoom_label = QLabel()
        self.statusBar().addPermanentWidget(self.live.readout)
        self.statusBar().addPermanentWidget(self.position_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self._build_actions()
        self.setAcceptDrops(True)

        self.view.viewport_changed.connect(self._on_viewport_changed)
        self.view.cursor_moved.connect(self._on_cursor_moved)
        self.view.slide_failed.connect(self._on_slide_failed)
        self.overview.center_requested.connect(self.view.center_on)
        self.browser.slide_chosen.connect(self.show_or_open)
        self.browser.choose_button.clicked.connect(self.choose_folder)
        self.associated.image_requested.connect(self._request_associated)
        self._update_actions()

    # -- composition ----------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self._action("&Open…", self.choose_files, QKeySequence.StandardKey.Open)
        self.folder_action = self._action("Open &folder…", self.choose_folder, "Ctrl+Shift+O")
        self.export_action = self._action("&Export view as PNG…", self.choose_export, "Ctrl+E")
        self.close_action = self._action("&Close slide", self.close_current_slide, QKeySequence.StandardKey.Close)
        file_menu.addActions([self.open_action, self.folder_action])
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addActions([self.export_action, self.close_action])
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit))

        model_menu = self.menuBar().addMenu("&Model")
        model_menu.addActions(self.live.actions)
        model_menu.addSeparator()
        self.train_action = self._action("&Train a model…", self.show_training, "Ctrl+T")
        model_menu.addAction(self.train_action)

        view_menu = self.menuBar().addMenu("&View")
        self.fit_action = self._action("&Fit (0)", self.view.fit)
        self.zoom_in_action = self._action("Zoom &in (+)", lambda: self.view.zoom_by(1.5))
        self.zoom_out_action = self._action("Zoom &out (−)", lambda: self.view.zoom_by(1 / 1.5))
        view_menu.addActions([self.fit_action, self.zoom_in_action, self.zoom_out_action])
        view_menu.addSeparator()

        toolbar = self.addToolBar("Navigation")
        toolbar.setObjectName("Navigation")
        toolbar.addActions([self.open_action, self.fit_action])
        toolbar.addSeparator()
        self.mag_actions: dict[float, QAction] = {}
        group = QActionGroup(self)
        for index, mag in enumerate(MAGNIFICATION_PRESETS, start=1):
            action = QAction(f"{mag:g}×", self)
            action.setShortcut(QKeySequence(str(index)))
            action.setToolTip(f"Show the slide at {mag:g}× (key {index})")
            action.setData(mag)
            action.triggered.connect(self._on_magnification_action)
            group.addAction(action)
            self.mag_actions[mag] = action
        view_menu.addActions(list(self.mag_actions.values()))
        toolbar.addActions(list(self.mag_actions.values()))
        toolbar.addSeparator()
        self.slide_combo = QComboBox()
        self.slide_combo.setMinimumContentsLength(24)
        self.slide_combo.setToolTip("Open slides: pick one to show it")
        self.slide_combo.activated.connect(self._on_combo_activated)
        toolbar.addWidget(QLabel(" Slide: "))
        toolbar.addWidget(self.slide_combo)
        for dock in self.findChildren(QDockWidget):
            view_menu.addAction(dock.toggleViewAction())

    def _update_actions(self) -> None:
        has_slide = self.current_path is not None
        presets = set(available_presets(self.view.native_magnification())) if has_slide else set()
        for mag, action in self.mag_actions.items():
            action.setEnabled(mag in presets)
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action, self.export_action, self.close_action):
            action.setEnabled(has_slide)

    # -- opening ------------------------------------------------------------------------
    def open_paths(self, paths: list[str]) -> None:
        for path in paths:
            self.show_or_open(path)

    def show_or_open(self, path: str) -> None:
        """Show ``path`` if it is open, else open it on a worker (``slide_opened`` when done)."""
        key = str(Path(path).resolve())
        if key in self.slides:
            self.show_slide(key)
        elif key not in self._opening:
            self._opening.add(key)
            self.statusBar().showMessage(f"Opening {Path(key).name}…")
            self.runner.submit(open_job, key, on_done=self._on_opened, on_error=self.report_error)

    def _on_opened(self, result: tuple[str, SlideSource | None, str | None]) -> None:
        key, source, error = result
        self._opening.discard(key)
        if error is not None:
            self.recent.remove(key)
            self.settings.setValue("recent_files", self.recent.paths)
            self.report_error(f"Could not open the slide.\n\n{error}")
            return
        if self._shut:
            source.close()
            return
        self.statusBar().clearMessage()
        self.slides[key] = OpenSlideEntry(SharedSource(source))
        self.slide_combo.addItem(Path(key).name, key)
        self.recent.add(key)
        self.settings.setValue("recent_files", self.recent.paths)
        if self.browser.folder is None:
            self.browser.set_folder(Path(key).parent)
        self.show_slide(key)
        self.slide_opened.emit(key)

    def show_slide(self, key: str) -> None:
        if self.current_path == key:
            return
        if self.current_path in self.slides:
            self.slides[self.current_path].viewport = self.view.viewport
        entry = self.slides[key]
        self.current_path = key
        source = entry.shared.source
        entry.viewport = self.view.set_slide(entry.shared, entry.viewport)
        self.live.set_slide(key)
        self.setWindowTitle(f"{source.name} — StreamSlide")
        self.properties.set_slide(source)
        self.associated.set_names(source.associated_image_names)
        self.overview.set_slide(source.dimensions)
        self.runner.submit(make_overview_image, entry.shared, OVERVIEW_PX, on_done=self._on_overview, on_error=self._on_overview_failed)
        self.slide_combo.setCurrentIndex(self.slide_combo.findData(key))
        self.browser.set_current(key)
        self._update_actions()
        self._on_viewport_changed()
        self.slide_shown.emit(key)

    def close_current_slide(self) -> None:
        key = self.current_path
        if key is None:
            return
        entry = self.slides.pop(key)
        self.slide_combo.removeItem(self.slide_combo.findData(key))
        self.current_path = None
        self.view.set_slide(None)
        self.live.slide_closed(key)
        self.cache.drop_slide(entry.shared.slide_id)
        entry.shared.close_when_idle()  # the last worker inside it closes it; never blocks here
        if self.slides:
            self.show_slide(next(iter(self.slides)))
        else:
            self.properties.set_slide(None)
            self.associated.set_names(())
            self.overview.set_slide(None)
            self.setWindowTitle("StreamSlide")
            self._update_actions()

    # -- results from workers -------------------------------------------------------------
    def _current_entry(self) -> OpenSlideEntry | None:
        return self.slides.get(self.current_path) if self.current_path else None

    def _on_overview(self, result: tuple[int, QImage]) -> None:
        slide_id, image = result
        entry = self._current_entry()
        if entry is not None and entry.shared.slide_id == slide_id:
            self.overview.set_thumbnail(image)
            self.overview_ready.emit()

    def _on_overview_failed(self, message: str) -> None:
        # The same damage shows in the view and is reported there once; say it quietly here.
        self.statusBar().showMessage(f"No overview: {message}", 15_000)

    def _request_associated(self, name: str) -> None:
        entry = self._current_entry()
        if entry is not None:
            self.runner.submit(read_associated_image, entry.shared, name, on_done=self._on_associated, on_error=self.associated.show_error)

    def _on_associated(self, result: tuple[int, str, QImage]) -> None:
        slide_id, name, image = result
        entry = self._current_entry()
        if entry is not None and entry.shared.slide_id == slide_id:
            self.associated.show_image(name, image)

    def _on_slide_failed(self, message: str) -> None:
        self.report_error(f"Reading the slide failed; its missing areas show coarser levels.\n\n{message}")

    def report_error(self, message: str) -> None:
        """Tell the user (status bar and a non-modal box) and keep going."""
        self.errors.append(message)
        self.statusBar().showMessage(message.replace("\n\n", " — "), 15_000)
        self.error_reported.emit(message)
        if self.popups:
            box = QMessageBox(QMessageBox.Icon.Warning, "StreamSlide", message, QMessageBox.StandardButton.Ok, self)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.setModal(False)
            box.show()

    # -- view readouts ----------------------------------------------------------------------
    def _on_viewport_changed(self) -> None:
        vp = self.view.viewport
        if vp is None:
            self.overview.set_view_box(None)
            self.zoom_label.setText("")
            return
        self.overview.set_view_box(vp.l0_visible_box())
        mag = vp.magnification(self.view.native_magnification())
        level = self.view.target_level()
        display_level = self.view.shared.pyramid[level]
        kind = ", virtual" if display_level.is_virtual else ""
        text = f"level {level} ({display_level.downsample:.3g}×↓{kind})  zoom {vp.scale * 100:.3g}%"
        self.zoom_label.setText(f"{mag:.3g}×  ·  {text}" if mag else text)

    def _on_cursor_moved(self, l0_point) -> None:
        if l0_point is None or self.view.shared is None:
            self.position_label.setText("")
            return
        l0_x, l0_y = l0_point
        text = f"x {int(l0_x)}  y {int(l0_y)} px"
        mpp = self.view.shared.source.mpp
        if mpp:
            text += f"  ·  {format_length_um(round(l0_x * mpp[0], 1))}, {format_length_um(round(l0_y * mpp[1], 1))}"
        self.position_label.setText(text)

    def _on_magnification_action(self) -> None:
        self.view.set_magnification(self.sender().data())

    def _on_combo_activated(self, index: int) -> None:
        self.show_slide(self.slide_combo.itemData(index))

    # -- dialogs ------------------------------------------------------------------------
    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open slides", "", FILE_FILTER)
        self.open_paths(paths)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Show the slides in a folder")
        if folder:
            self.browser.set_folder(folder)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.recent.paths:
            action = self.recent_menu.addAction(path)
            action.setData(path)
            action.triggered.connect(self._on_recent_action)
        self.recent_menu.setEnabled(bool(self.recent.paths))

    def _on_recent_action(self) -> None:
        self.show_or_open(self.sender().data())

    def choose_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export view as PNG", "view.png", "PNG images (*.png)")
        if not path:
            return
        choice, ok = QInputDialog.getItem(self, "Export resolution", "Resolution:", list(EXPORT_CHOICES), 0, False)
        if ok:
            self.export_view(path, EXPORT_CHOICES[choice])

    def export_view(self, path: str, factor: int = 1) -> None:
        """Save the view as PNG (``export_done`` when written). ``factor`` 1 is what the screen
        shows (overlays included); 2 or 4 re-reads the slide at that many times the pixels."""
        entry = self._current_entry()
        if entry is None:
            return
        if factor == 1:
            self.runner.submit(export.save_png, self.view.render_image(), path, on_done=self.export_done.emit, on_error=self.report_error)
            return
        vp = self.view.viewport
        l0_box: Box = vp.l0_visible_box()
        self.runner.submit(
            export.export_region_png, entry.shared, l0_box, vp.screen_w * factor, vp.screen_h * factor, path,
            on_done=self.export_done.emit, on_error=self.report_error,
        )

    # -- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        self.open_paths([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
        event.acceptProposedAction()

    def show_training(self) -> None:
        self.training_dock.show()
        self.training_dock.raise_()
        self.training.controller.warm_up()  # the engine's import, ahead of Start (see viewer.gc_pauses)
        QTimer.singleShot(0, self._size_training_dock)  # after the dock is laid out, or Qt ignores it

    def _size_training_dock(self) -> None:
        self.resizeDocks([self.training_dock], [max(400, self.height() * 2 // 5)], Qt.Orientation.Vertical)

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Cancel and wait for every worker, then close every slide. Safe to call twice."""
        if self._shut:
            return
        self._shut = True
        self.view.set_slide(None)
        self.training.shutdown()  # cancels a run: the engine saves last/ first
        self.live.shutdown()
        self.loader.shutdown()
        self.runner.shutdown()
        for entry in self.slides.values():
            entry.shared.close_when_idle()
        self.slides.clear()

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._shut and not self.training.close_requested(self):
            event.ignore()  # training goes on; the window closes itself when it ends, if asked to
            return
        self.shutdown()
        super().closeEvent(event)
