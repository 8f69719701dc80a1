"""The main window: composition only. It makes the models, workers, controllers and widgets,
docks the panels around the :class:`~viewer.render.slide_view.SlideView`, and binds widgets to
models and controller signals. The menus are :mod:`viewer.window_menus`, the dialogs
:mod:`viewer.window_dialogs`; the logic lives in :mod:`viewer.controllers`."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QMessageBox, QVBoxLayout, QWidget

from viewer.controllers.annotations import AnnotationsController, is_annotation_file
from viewer.controllers.cohort import CohortEvaluation
from viewer.controllers.fine_tuning import FineTuning
from viewer.controllers.live_maps import LiveMaps
from viewer.controllers.scoring import Scoring
from viewer.controllers.slides import MESSAGE_MS, SlidesController
from viewer.model.cohort import CohortForm, CohortTable
from viewer.model.inference import InferenceSettings, ModelChoice
from viewer.model.labels import LabelTable
from viewer.model.training_form import TrainingForm
from viewer.model.viewport import describe_position, describe_zoom
from viewer.model.workspace import OpenSlide, RecentFiles, Workspace
from viewer.render.annotation_painter import AnnotationPainter
from viewer.render.overlay import OverlayPainter
from viewer.render.slide_view import SlideView
from viewer.render.tile_cache import TileCache, default_cache_bytes
from viewer.widgets import training_dock
from viewer.widgets.annotation_classes import AnnotationClassList
from viewer.widgets.annotation_list import AnnotationList
from viewer.widgets.annotation_tools import ToolDelegate
from viewer.widgets.associated_images import AssociatedImagesPanel
from viewer.widgets.browser_labels import BrowserLabeller
from viewer.widgets.cohort_panel import CohortPanel
from viewer.widgets.job_panel import JobPanel
from viewer.widgets.model_panel import ModelPanel
from viewer.widgets.overlay_panel import OverlayPanel
from viewer.widgets.overview import OverviewWidget
from viewer.widgets.properties_panel import PropertiesPanel
from viewer.widgets.score_panel import ScorePanel
from viewer.widgets.slide_browser import SlideBrowser
from viewer.window_dialogs import WindowDialogs
from viewer.window_menus import WindowMenus
from viewer.workers.background import BackgroundRunner
from viewer.workers.evaluation import EvaluationRunner, engine_evaluation_runner
from viewer.workers.gc_pauses import collect_on_ui_thread
from viewer.workers.inference import Runner, engine_runner
from viewer.workers.tiles import TileLoader
from viewer.workers.training import TrainRunner, engine_train_runner

LEFT, RIGHT, BOTTOM = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea, Qt.DockWidgetArea.BottomDockWidgetArea


class MainWindow(WindowMenus, WindowDialogs, QMainWindow):
    error_reported = Signal(str)

    def __init__(self, *, settings: QSettings | None = None, cache_bytes: int | None = None, popups: bool = True,
                 runner: Runner = engine_runner, train_runner: TrainRunner = engine_train_runner,
                 evaluation_runner: EvaluationRunner = engine_evaluation_runner) -> None:
        super().__init__()
        collect_on_ui_thread()  # a collection on a worker can deadlock Qt (see viewer.workers.gc_pauses)
        self.setWindowTitle("StreamSlide")
        self.settings = settings or QSettings("StreamSlide", "viewer")
        self.popups = popups
        self.errors: list[str] = []
        self._shut = False
        # Models.
        self.workspace = Workspace(RecentFiles.stored(self.settings, "recent_files"))
        self.inference = InferenceSettings()
        self.model = ModelChoice(RecentFiles.stored(self.settings, "recent_models"))
        self.training_form = TrainingForm()
        self.labels = LabelTable()
        # Workers and the view.
        self.runner = BackgroundRunner(workers=1, parent=self)
        self.loader = TileLoader(parent=self)
        self.cache = TileCache(cache_bytes or int(self.settings.value("cache/max_bytes", default_cache_bytes())))
        self.view = SlideView(self.loader, self.cache)
        self.overlay_painter = OverlayPainter(self.view.update_l0_box)
        self.view.add_overlay(self.overlay_painter)
        # Annotations: their own worker, so simplifying a large file never delays a slide opening.
        self.annotation_runner = BackgroundRunner(workers=1, parent=self)
        self.annotation_painter = AnnotationPainter(self.view.update_l0_box, self.annotation_runner.submit,
                                                    lambda: self.view.moving)
        self.view.add_overlay(self.annotation_painter)
        # Widgets.
        self.overview = OverviewWidget()
        self.browser = SlideBrowser(self.runner)
        self.properties = PropertiesPanel()
        self.associated = AssociatedImagesPanel()
        self.model_panel = ModelPanel(self.inference, self.model)
        self.job_panel = JobPanel()
        self.overlay_panel = OverlayPanel()
        self.training_view = training_dock.TrainingDock(self.training_form)
        self.labeller = BrowserLabeller(self.browser, self.labels, parent=self)
        self.annotation_classes = AnnotationClassList()
        self.annotation_list = AnnotationList()
        self.annotation_tools = ToolDelegate(self.annotation_painter, self.view.update,
                                             self.annotation_classes.current_class, parent=self)
        self.view.add_overlay(self.annotation_tools)
        self.view.tool_delegate = self.annotation_tools
        self.readout, self.position_label, self.zoom_label = QLabel(), QLabel(), QLabel()
        # The view follows the shown slide first; the controllers after it.
        self.workspace.slide_added.connect(self._on_slide_added)
        self.workspace.slide_removed.connect(self._on_slide_removed)
        self.workspace.current_changed.connect(self._on_current_slide)
        # Controllers.
        self.slides = SlidesController(self.workspace, self.runner, self.cache, self.report_error, parent=self)
        self.live = LiveMaps(self.workspace, self.inference, self.model, self.report_error, runner, parent=self)
        self.training = FineTuning(self.training_form, self.labels, self.live, self.report_error, self.settings,
                                   train_runner, parent=self)
        self.annotations = AnnotationsController(self.workspace, self.annotation_runner, self.report_error, self.settings,
                                                 parent=self)
        self.scoring = Scoring(lambda: self.live.slide_path, parent=self)
        self.score_panel = ScorePanel(self.scoring)
        # Cohort evaluation: queued on the live maps' engine worker (one model job at a time).
        self.cohort_form, self.cohort_table = CohortForm(), CohortTable()
        self.cohort = CohortEvaluation(self.cohort_form, self.cohort_table, self.labels, self.live, self.workspace,
                                       self.slides.show_or_open, self.report_error, evaluation_runner, parent=self)
        self.cohort_panel = CohortPanel(self.cohort_form, self.cohort_table)
        self._build_docks()
        self.build_menus()
        self._bind()
        self.setAcceptDrops(True)
        self._update_actions()

    # -- composition ----------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _build_docks(self) -> None:
        self.setCentralWidget(self.view)
        left = [self._dock("Overview", self.overview, LEFT), self._dock("Slide browser", self.browser, LEFT)]
        model_column = QWidget()
        column = QVBoxLayout(model_column)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.model_panel, 1)
        column.addWidget(self.job_panel)
        right = [self._dock("Model", model_column, RIGHT), self._dock("Overlays", self.overlay_panel, RIGHT),
                 self._dock("Properties", self.properties, RIGHT), self._dock("Associated images", self.associated, RIGHT)]
        annotation_column = QWidget()
        column = QVBoxLayout(annotation_column)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.annotation_classes, 2)
        column.addWidget(self.annotation_list, 3)
        self.annotations_dock = self._dock("Annotations", annotation_column, RIGHT)
        self.tabifyDockWidget(right[0], self.annotations_dock)
        self.score_dock = self._dock("Score against annotations", self.score_panel, RIGHT)
        self.tabifyDockWidget(right[0], self.score_dock)
        # Model, Properties and Associated images share one tab group, so the view keeps its width
        # and the docks their height; the overlay controls stay visible beside the slide.
        self.tabifyDockWidget(right[0], right[2])
        self.tabifyDockWidget(right[0], right[3])
        right[0].raise_()
        # Fine-tuning: wide curves need the bottom area; hidden until asked for (Model ▸ Train).
        self.training_dock = self._dock("Training", self.training_view, BOTTOM)
        self.training_dock.hide()
        self.cohort_dock = self._dock("Cohort", self.cohort_panel, BOTTOM)
        self.tabifyDockWidget(self.training_dock, self.cohort_dock)
        self.cohort_dock.hide()
        # The right column's docks are tall: the training dock spans the view and the left column only.
        self.setCorner(Qt.Corner.BottomRightCorner, RIGHT)
        self.resizeDocks(left + right[:2], [300, 300, 380, 380], Qt.Orientation.Horizontal)
        for label in (self.readout, self.position_label, self.zoom_label):
            self.statusBar().addPermanentWidget(label)

    def _bind(self) -> None:
        slides, live, view = self.slides, self.live, self.view
        slides.opened_in_folder.connect(self._browse_if_unset)
        slides.status_message.connect(self.statusBar().showMessage)
        slides.overview_ready.connect(self.overview.set_thumbnail)
        slides.associated_ready.connect(self.associated.show_image)
        slides.associated_failed.connect(self.associated.show_error)
        self.associated.image_requested.connect(slides.request_associated)
        self.browser.slide_chosen.connect(slides.show_or_open)
        self.browser.choose_button.clicked.connect(self.choose_folder)
        self.overview.center_requested.connect(view.center_on)
        view.viewport_changed.connect(self._on_viewport_changed)
        view.cursor_moved.connect(self._on_cursor_moved)
        view.slide_failed.connect(self._on_slide_failed)
        view.region_drawn.connect(live.run_region)
        self.inference.changed.connect(self._on_inference_setting)
        self.model_panel.model_chosen.connect(live.load_model)
        self.model_panel.run_requested.connect(live.run)
        self.job_panel.bind(live)
        live.stack_shown.connect(self.overlay_painter.set_stack)
        live.stack_shown.connect(self.overlay_panel.set_stack)
        live.stack_shown.connect(self.scoring.set_stack)
        live.availability_changed.connect(self._update_actions)
        self.training_view.bind(self.training)
        self.cohort_panel.bind(self.cohort)
        self.labeller.labels_changed.connect(self.training.on_browser_labels)
        self.annotations.document_shown.connect(self._on_annotation_document)
        self.annotations.status_message.connect(self.statusBar().showMessage)
        self.annotation_list.center_requested.connect(view.center_on)
        self.annotation_tools.edit_failed.connect(self.report_error)
        self.annotation_classes.edit_failed.connect(self.report_error)
        self.overlay_panel.to_annotations_requested.connect(self.choose_to_annotations)
        self.annotations.selection_changed.connect(self.model_panel.set_selection)
        live.annotation_scope = self.annotations.run_scope

    # -- following the models ---------------------------------------------------------------
    def _on_slide_added(self, entry: OpenSlide) -> None:
        self.slide_combo.addItem(Path(entry.key).name, entry.key)

    def _on_slide_removed(self, entry: OpenSlide) -> None:
        self.slide_combo.removeItem(self.slide_combo.findData(entry.key))

    def _on_current_slide(self, entry: OpenSlide | None) -> None:
        if entry is None:
            self.view.set_slide(None)
            self.properties.set_slide(None)
            self.associated.set_names(())
            self.overview.set_slide(None)
            self.setWindowTitle("StreamSlide")
        else:
            source = entry.shared.source
            entry.viewport = self.view.set_slide(entry.shared, entry.viewport)
            self.setWindowTitle(f"{source.name} — StreamSlide")
            self.properties.set_slide(source)
            self.associated.set_names(source.associated_image_names)
            self.overview.set_slide(source.dimensions)
            self.slide_combo.setCurrentIndex(self.slide_combo.findData(entry.key))
            self.browser.set_current(entry.key)
        self._update_actions()
        self._on_viewport_changed()

    def _on_annotation_document(self, document) -> None:
        self.annotation_tools.cancel()
        self.annotation_painter.set_document(document)
        self.annotation_classes.set_document(document)
        self.annotation_list.set_document(document, self.annotations.mpp())
        self.scoring.set_document(document)
        self._update_actions()

    def _on_inference_setting(self, name: str) -> None:
        if name == "region_mode":
            self.view.set_region_mode(self.inference.region_mode)

    def _browse_if_unset(self, folder: str) -> None:
        if self.browser.folder is None:
            self.browser.set_folder(folder)

    def _on_viewport_changed(self) -> None:
        vp = self.view.viewport
        self.overview.set_view_box(vp.l0_visible_box() if vp is not None else None)
        if vp is None:
            self.zoom_label.setText("")
            return
        level = self.view.target_level()
        display_level = self.view.shared.pyramid[level]
        self.zoom_label.setText(describe_zoom(vp.magnification(self.view.native_magnification()), level,
                                              display_level.downsample, display_level.is_virtual, vp.scale))

    def _on_cursor_moved(self, l0_point) -> None:
        on_slide = l0_point is not None and self.view.shared is not None
        self.position_label.setText(describe_position(*l0_point, self.view.shared.source.mpp) if on_slide else "")
        self.readout.setText("  ·  ".join(f"{key.label} {value:.3g}" for key, value in self.live.values_at(l0_point)))

    def _on_slide_failed(self, message: str) -> None:
        self.report_error(f"Reading the slide failed; its missing areas show coarser levels.\n\n{message}")

    def report_error(self, message: str) -> None:
        """Tell the user (status bar and a non-modal box) and keep going."""
        self.errors.append(message)
        self.statusBar().showMessage(message.replace("\n\n", " — "), MESSAGE_MS)
        self.error_reported.emit(message)
        if self.popups:
            box = QMessageBox(QMessageBox.Icon.Warning, "StreamSlide", message, QMessageBox.StandardButton.Ok, self)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.setModal(False)
            box.show()

    # -- commands -------------------------------------------------------------------------------
    def open_paths(self, paths: list[str]) -> None:
        for path in paths:
            self.slides.show_or_open(path)

    def export_view(self, path: str, factor: int = 1) -> None:
        """Save the view as PNG (``slides.export_done`` when written): ``factor`` 1 is what the
        screen shows (overlays included); 2 or 4 re-reads the slide at that many times the pixels."""
        self.slides.export_view(path, factor, self.view.render_image)

    def show_training(self) -> None:
        self.training_dock.show()
        self.training_dock.raise_()
        self.training.warm_up()
        QTimer.singleShot(0, self._size_training_dock)  # after the dock is laid out, or Qt ignores it

    def show_cohort(self) -> None:
        self.cohort_dock.show()
        self.cohort_dock.raise_()
        QTimer.singleShot(0, lambda: self.resizeDocks([self.cohort_dock], [max(400, self.height() * 2 // 5)],
                                                      Qt.Orientation.Vertical))

    def _size_training_dock(self) -> None:
        self.resizeDocks([self.training_dock], [max(400, self.height() * 2 // 5)], Qt.Orientation.Vertical)

    # -- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        for path in filter(is_annotation_file, paths):
            self.annotations.import_file(path)
        self.open_paths([p for p in paths if not is_annotation_file(p)])
        event.acceptProposedAction()

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Cancel and wait for every worker, then close every slide. Safe to call twice."""
        if self._shut:
            return
        self._shut = True
        self.view.set_slide(None)
        self.training.shutdown()  # cancels a run: the engine saves last/ first
        self.cohort.shutdown()  # cancels an evaluation; the live maps' worker below waits for it
        self.live.shutdown()
        self.loader.shutdown()
        self.runner.shutdown()
        self.annotation_runner.shutdown()
        self.scoring.shutdown()
        self.annotations.shutdown()
        self.slides.shutdown()

    @property
    def is_shut_down(self) -> bool:
        return self._shut

    def _ask_close_while_training(self) -> str:
        return training_dock.ask_close_while_training(self)  # looked up now: tests replace it

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._shut and not self.training.close_requested(self._ask_close_while_training, self.hide, self.close):
            event.ignore()  # training goes on; the window closes itself when it ends, if asked to
            return
        self.shutdown()
        super().closeEvent(event)
