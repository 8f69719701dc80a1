"""The main window's file and choice dialogs: each asks the user, then hands the answer to a
controller. A mixin of :class:`~viewer.main_window.MainWindow`."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog, QInputDialog

FILE_FILTER = "Slides and images (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.bif *.svslide *.dcm *.png *.jpg *.jpeg *.bmp);;All files (*)"
ANNOTATION_FILTER = "Annotations (*.geojson *.json *.xml);;QuPath GeoJSON (*.geojson *.json);;ASAP XML (*.xml)"
EXPORT_CHOICES = {"Screen resolution": 1, "2x screen resolution": 2, "4x screen resolution": 4}


class WindowDialogs:
    """Open, export and import dialogs of the main window."""

    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open slides", "", FILE_FILTER)
        self.open_paths(paths)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Show the slides in a folder")
        if folder:
            self.browser.set_folder(folder)

    def choose_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export view as PNG", "view.png", "PNG images (*.png)")
        if not path:
            return
        choice, ok = QInputDialog.getItem(self, "Export resolution", "Resolution:", list(EXPORT_CHOICES), 0, False)
        if ok:
            self.export_view(path, EXPORT_CHOICES[choice])

    def choose_export_maps(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export maps to a folder")
        if folder:
            self.live.export_maps(folder)

    def choose_load_maps(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load maps as overlay", "", "StreamSlide maps (maps.npz *.npz)")
        if path:
            self.live.load_maps(path)

    def choose_import_annotations(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import annotations", "", ANNOTATION_FILTER)
        if path:
            self.annotations.import_file(path)

    def choose_export_annotations(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export annotations", "annotations.geojson", ANNOTATION_FILTER)
        if path:
            self.annotations.export_file(path)

    def choose_to_annotations(self) -> None:
        doc = self.annotations.document
        names = (list(doc.classes) if doc is not None else []) or ["Region"]
        name, ok = QInputDialog.getItem(self, "To annotations", "Class of the new annotations:", names, 0, True)
        if ok and name.strip():
            self.annotations.to_annotations(self.overlay_panel.stack, name.strip())
