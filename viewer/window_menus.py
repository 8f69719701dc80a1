"""The main window's menus, toolbars and the enabling of their actions: one mixin of
:class:`~viewer.main_window.MainWindow`, so the window's composition reads on its own."""

from __future__ import annotations

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QComboBox, QDockWidget, QLabel

from viewer.model.viewport import MAGNIFICATION_PRESETS, available_presets
from viewer.widgets.annotation_tools import AnnotationToolbar


class WindowMenus:
    """File, Model, Overlays and View menus, the navigation toolbar and the annotation toolbar.
    Needs the window's view, controllers and panels built first."""

    def _action(self, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        return action

    def build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self._action("&Open…", self.choose_files, QKeySequence.StandardKey.Open)
        self.folder_action = self._action("Open &folder…", self.choose_folder, "Ctrl+Shift+O")
        self.export_action = self._action("&Export view as PNG…", self.choose_export, "Ctrl+E")
        self.close_action = self._action("&Close slide", self.slides.close_current, QKeySequence.StandardKey.Close)
        file_menu.addActions([self.open_action, self.folder_action])
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addActions([self.export_action, self.close_action])
        file_menu.addSeparator()
        self.import_annotations_action = self._action("&Import annotations…", self.choose_import_annotations)
        self.export_annotations_action = self._action("E&xport annotations…", self.choose_export_annotations)
        file_menu.addActions([self.import_annotations_action, self.export_annotations_action])
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit))

        model_menu = self.menuBar().addMenu("&Model")
        self.export_maps_action = self._action("Export &maps (.npz, TIFF)…", self.choose_export_maps)
        self.load_maps_action = self._action("&Load maps as overlay…", self.choose_load_maps)
        model_menu.addActions([self._action("Load &model…", self.model_panel.choose_model), self.export_maps_action,
                               self.load_maps_action])
        model_menu.addSeparator()
        self.train_action = self._action("&Train a model…", self.show_training, "Ctrl+T")
        model_menu.addAction(self.train_action)
        self.cohort_action = self._action("&Evaluate a cohort…", self.show_cohort, "Ctrl+Shift+E")
        model_menu.addAction(self.cohort_action)

        overlays_menu = self.menuBar().addMenu("&Overlays")
        self.to_annotations_action = self._action("To &annotations…", self.choose_to_annotations)
        self.to_annotations_action.setToolTip("The shown layer's cells above its threshold become annotations")
        overlays_menu.addAction(self.to_annotations_action)
        self.show_annotations_action = self._action("&Show annotations", self.annotation_painter.set_visible)
        self.fill_annotations_action = self._action("&Fill annotations", lambda on: self.annotation_painter.set_fill(0.2 * on))
        for action, on in ((self.show_annotations_action, True), (self.fill_annotations_action, False)):
            action.setCheckable(True)
            action.setChecked(on)
        overlays_menu.addActions([self.show_annotations_action, self.fill_annotations_action])

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
            action = self._action(f"{mag:g}×", lambda _checked=False, mag=mag: self.view.set_magnification(mag), str(index))
            action.setToolTip(f"Show the slide at {mag:g}× (key {index})")
            group.addAction(action)
            self.mag_actions[mag] = action
        view_menu.addActions(list(self.mag_actions.values()))
        toolbar.addActions(list(self.mag_actions.values()))
        toolbar.addSeparator()
        self.slide_combo = QComboBox()
        self.slide_combo.setMinimumContentsLength(24)
        self.slide_combo.setToolTip("Open slides: pick one to show it")
        self.slide_combo.activated.connect(lambda index: self.slides.show(self.slide_combo.itemData(index)))
        toolbar.addWidget(QLabel(" Slide: "))
        toolbar.addWidget(self.slide_combo)
        for dock in self.findChildren(QDockWidget):
            view_menu.addAction(dock.toggleViewAction())
        self.annotation_toolbar = AnnotationToolbar(self.annotation_tools, self)
        self.addToolBar(self.annotation_toolbar)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.workspace.recent.paths:
            self.recent_menu.addAction(path).triggered.connect(lambda _checked=False, path=path: self.slides.show_or_open(path))
        self.recent_menu.setEnabled(bool(self.workspace.recent.paths))

    def _update_actions(self) -> None:
        has_slide = self.workspace.current is not None
        presets = set(available_presets(self.view.native_magnification())) if has_slide else set()
        for mag, action in self.mag_actions.items():
            action.setEnabled(mag in presets)
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action, self.export_action, self.close_action):
            action.setEnabled(has_slide)
        self.export_maps_action.setEnabled(self.live.can_export_maps)
        self.load_maps_action.setEnabled(self.live.can_load_maps)
        for action in (self.import_annotations_action, self.export_annotations_action, self.to_annotations_action):
            action.setEnabled(has_slide)
