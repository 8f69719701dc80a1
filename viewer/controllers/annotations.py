"""Each open slide's annotation document: loaded from its sidecar file when the slide is first
shown, autosaved (atomically, on a worker) a moment after each edit, imported into and exported
from, and filled from a map layer at its threshold (*Overlays ▸ To annotations*).

The sidecar is ``<slide>.annotations.geojson`` beside the slide, or in a chosen folder
(``annotations/folder`` in the settings; the app's data folder by default) when the slide's
folder cannot be written. A file that fails to load is reported and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QStandardPaths, QTimer, Signal

from engine.annotations.files import LoadResult
from engine.errors import StreamSlideError
from viewer.model.annotations import AnnotationDocument
from viewer.model.inference import AnnotationScope
from viewer.model.overlays import OverlayStack
from viewer.model.workspace import OpenSlide, SettingsStore, Workspace
from viewer.workers.annotation_jobs import (
    contours_job,
    load_if_exists_job,
    load_job,
    save_job,
    shutdown_helper,
    sidecar_path,
)
from viewer.workers.background import BackgroundRunner

#: Edits within this long of each other are saved together.
AUTOSAVE_MS = 1000
#: Suffixes dropped or imported files are read as annotations (anything else opens as a slide).
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml", ".geojson.gz", ".json.gz")


def is_annotation_file(path: str) -> bool:
    return path.lower().endswith(ANNOTATION_SUFFIXES)


class AnnotationsController(QObject):
    #: The shown slide's document (None when no slide is shown).
    document_shown = Signal(object)
    status_message = Signal(str, int)
    #: A document was written to this path (autosave or export).
    saved = Signal(str)
    #: A document was filled from a file or a map (tests and the status bar wait on it).
    loaded = Signal(object)
    #: How many annotations with an area the shown slide has selected (the *Selection* run scope).
    selection_changed = Signal(int)

    def __init__(self, workspace: Workspace, runner: BackgroundRunner, report_error: Callable[[str], None],
                 settings: SettingsStore, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workspace, self.runner, self._report, self.settings = workspace, runner, report_error, settings
        self.documents: dict[str, AnnotationDocument] = {}
        self.current_key: str | None = None
        self._saving: set[str] = set()
        self._autosave = QTimer(self, singleShot=True, interval=AUTOSAVE_MS)
        self._autosave.timeout.connect(self.save_dirty)
        workspace.current_changed.connect(self._on_current)
        workspace.slide_removed.connect(self._on_removed)

    @property
    def document(self) -> AnnotationDocument | None:
        return self.documents.get(self.current_key) if self.current_key else None

    @property
    def fallback_folder(self) -> str:
        default = str(Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)) / "annotations")
        return str(self.settings.value("annotations/folder", default) or default)

    def path_for(self, key: str) -> Path:
        return sidecar_path(key, self.fallback_folder)

    def mpp(self) -> tuple[float, float] | None:
        entry = self.workspace.current
        return entry.shared.source.mpp if entry is not None else None

    # -- following the workspace ---------------------------------------------------------------
    def _on_current(self, entry: OpenSlide | None) -> None:
        self.current_key = entry.key if entry is not None else None
        if entry is not None and entry.key not in self.documents:
            doc = AnnotationDocument()
            doc.changed.connect(lambda _box, key=entry.key: self._on_edit(key))
            doc.selection_changed.connect(lambda key=entry.key: self._on_selection(key))
            self.documents[entry.key] = doc
            path = str(self.path_for(entry.key))
            self.runner.submit(load_if_exists_job, path, on_done=lambda r, key=entry.key: self._on_sidecar(key, r),
                               on_error=lambda m: self._report(f"The saved annotations could not be read; "
                                                                            f"they are left as they are.\n\n{m}"))
        self.document_shown.emit(self.document)
        self._on_selection(self.current_key)

    def _on_selection(self, key: str | None) -> None:
        if key == self.current_key:
            scope = self.run_scope()
            self.selection_changed.emit(len(scope.selected) if scope is not None else 0)

    def run_scope(self) -> AnnotationScope | None:
        """What a model run on the shown slide takes from its annotations: the selected ones with
        an area and those of the classes marked exclude (None: no slide shown)."""
        doc = self.document
        if doc is None:
            return None
        return AnnotationScope.of(doc.annotations, doc.selection, doc.excluded_classes)

    def _on_removed(self, entry: OpenSlide) -> None:
        doc = self.documents.get(entry.key)
        if doc is not None and doc.dirty:
            self._save(entry.key, doc)
        self.documents.pop(entry.key, None)

    def _on_sidecar(self, key: str, result: LoadResult | None) -> None:
        doc = self.documents.get(key)
        if result is None or doc is None:
            return
        if len(doc) == 0 and not doc.dirty:
            doc.replace_all(result.annotations, mark_dirty=False)
        else:  # drawn on before the file arrived: keep both
            doc.add(result.annotations, "load", result.annotations.class_colors())
        self._warn(result)
        self.loaded.emit(doc)

    def _warn(self, result: LoadResult) -> None:
        if result.warnings:
            self.status_message.emit(f"{result.path.name}: {len(result.warnings)} repairs: {result.warnings[0]}", 8000)

    # -- saving --------------------------------------------------------------------------------
    def _on_edit(self, key: str) -> None:
        doc = self.documents.get(key)
        if doc is not None and doc.dirty:
            self._autosave.start()

    def save_dirty(self) -> None:
        for key, doc in list(self.documents.items()):
            if doc.dirty and key not in self._saving:
                self._save(key, doc)

    def _save(self, key: str, doc: AnnotationDocument) -> None:
        self._saving.add(key)
        self.runner.submit(save_job, doc.to_set(), str(self.path_for(key)), doc.version,
                           on_done=lambda r, key=key, doc=doc: self._on_saved(key, doc, r),
                           on_error=lambda m, key=key: self._on_save_failed(key, m))

    def _on_saved(self, key: str, doc: AnnotationDocument, result: tuple[str, int, tuple[str, ...]]) -> None:
        self._saving.discard(key)
        path, version, _ = result
        doc.mark_saved(version)
        self.saved.emit(path)
        if doc.dirty:  # edited while it was being written
            self._autosave.start()

    def _on_save_failed(self, key: str, message: str) -> None:
        self._saving.discard(key)
        self._report(f"The annotations could not be saved; they stay open here.\n\n{message}")

    # -- import, export, maps --------------------------------------------------------------------
    def import_file(self, path: str) -> None:
        doc = self.document
        if doc is None:
            self._report("Open a slide first: annotations belong to a slide.")
            return
        self.runner.submit(load_job, path, on_done=lambda r, doc=doc: self._on_imported(doc, r),
                           on_error=lambda m: self._report(f"The annotations were not imported; nothing changed.\n\n{m}"))

    def _on_imported(self, doc: AnnotationDocument, result: LoadResult) -> None:
        doc.add(result.annotations, "import", result.annotations.class_colors())
        self._warn(result)
        self.status_message.emit(f"Imported {len(result.annotations)} annotations from {result.path.name}", 5000)
        self.loaded.emit(doc)

    def export_file(self, path: str) -> None:
        doc = self.document
        if doc is None:
            return
        self.runner.submit(save_job, doc.to_set(), path, -1, on_done=lambda r: self._on_exported(r),
                           on_error=lambda m: self._report(f"The annotations were not exported.\n\n{m}"))

    def _on_exported(self, result: tuple[str, int, tuple[str, ...]]) -> None:
        path, _, warnings = result
        note = f" ({len(warnings)} shapes changed: {warnings[0]})" if warnings else ""
        self.status_message.emit(f"Exported the annotations to {path}{note}", 5000)
        self.saved.emit(path)

    def to_annotations(self, stack: OverlayStack | None, class_name: str | None) -> bool:
        """The active layer's cells at or above its threshold become annotations of ``class_name``
        (on a worker); False (and a message) when there is no layer or no threshold."""
        doc = self.document
        layer = stack.layers.get(stack.active) if stack is not None and stack.active else None
        if doc is None or layer is None:
            self._report("Show a map layer first: its cells above the threshold become annotations.")
            return False
        threshold = layer.style.threshold
        if threshold is None:
            self._report(f"Set a threshold on {layer.key} first (Overlays ▸ Hide below).")
            return False
        self.runner.submit(contours_job, layer.values.copy(), layer.geometry, threshold, class_name, self.mpp(),
                           str(layer.key), on_done=lambda found, doc=doc, key=layer.key, t=threshold:
                           self._on_contours(doc, [a.replace(name=f"{key} ≥ {t:g} #{i}") for i, a in enumerate(found, 1)]),
                           on_error=lambda m: self._report(f"The map could not be turned into annotations.\n\n{m}"))
        return True

    def _on_contours(self, doc: AnnotationDocument, found) -> None:
        doc.add(found, "to annotations")
        self.status_message.emit(f"{len(found)} regions became annotations", 5000)
        self.loaded.emit(doc)

    def shutdown(self) -> None:
        """Write what is unsaved now, on this thread: the workers are about to stop."""
        self._autosave.stop()
        for key, doc in self.documents.items():
            if doc.dirty:
                try:
                    save_job(doc.to_set(), str(self.path_for(key)), doc.version)
                except (StreamSlideError, OSError) as exc:
                    self._report(f"The annotations of {Path(key).name} could not be saved.\n\n{exc}")
        shutdown_helper()

