"""The *Score against annotations* panel's logic: the shown map layer of the shown slide scored
against a chosen annotation class (share of the map's mass inside it, the share an even map
would score, pixel AUC), on a worker, again whenever the map, the shown layer, the annotations
or the choices change.

Changes are gathered for :data:`REFRESH_MS` (a live run changes the map many times a second),
one score runs at a time, and a result that a later change made stale is dropped for the next.
"""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from viewer.model.annotations import AnnotationDocument
from viewer.model.overlays import OverlayStack
from viewer.workers.background import BackgroundRunner
from viewer.workers.score_jobs import score_layer_job

#: Changes within this long of the first one are scored together.
REFRESH_MS = 400


class Scoring(QObject):
    #: A result: ``{"layer": str, "class": ..., "mass_inside": ..., ...}`` (the engine's keys).
    scored = Signal(dict)
    #: Why there is nothing to score now, or why scoring failed (a sentence).
    unavailable = Signal(str)
    #: The class choices changed (the shown slide's annotation classes).
    classes_changed = Signal(list)

    def __init__(self, slide_path: Callable[[], str | None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._slide_path = slide_path
        self.runner = BackgroundRunner(workers=1, parent=self)
        self.stack: OverlayStack | None = None
        self.document: AnnotationDocument | None = None
        self.class_name: str | None = None
        self.tissue_only = False
        self.last: dict | None = None
        self._version = 0  # bumped on every change; a result of an older version is stale
        self._running: int | None = None  # the version being scored
        self._timer = QTimer(self, singleShot=True, interval=REFRESH_MS)
        self._timer.timeout.connect(self._start)

    # -- following the models ------------------------------------------------------------------
    def set_stack(self, stack: OverlayStack | None) -> None:
        if self.stack is not None:
            self.stack.changed.disconnect(self._on_map_changed)
        self.stack = stack
        if stack is not None:
            stack.changed.connect(self._on_map_changed)
        self.refresh()

    def set_document(self, document: AnnotationDocument | None) -> None:
        if self.document is not None:
            self.document.changed.disconnect(self._on_map_changed)
            self.document.classes_changed.disconnect(self._on_classes)
        self.document = document
        if document is not None:
            document.changed.connect(self._on_map_changed)
            document.classes_changed.connect(self._on_classes)
        self._on_classes()

    def _on_classes(self) -> None:
        self.classes_changed.emit(self.class_names())
        self.refresh()

    def class_names(self) -> list[str]:
        if self.document is None:
            return []
        return list(dict.fromkeys([*self.document.classes, *self.document.to_set().class_names]))

    def set_class(self, class_name: str | None) -> None:
        if class_name != self.class_name:
            self.class_name = class_name
            self.refresh()

    def set_tissue_only(self, on: bool) -> None:
        if on != self.tissue_only:
            self.tissue_only = on
            self.refresh()

    def _on_map_changed(self, _box=None) -> None:
        self._version += 1
        if not self._timer.isActive():  # throttled, not debounced: a live run still gets scores
            self._timer.start()

    def refresh(self) -> None:
        """Score again soon (now, when the event loop turns, for a choice the user made)."""
        self._version += 1
        # Not self._timer.start(0): that would set the throttle's interval to 0 for good.
        self._timer.stop()
        QTimer.singleShot(0, self._start)

    # -- scoring -------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._running is not None:
            return  # the running score's end starts the next
        stack, doc = self.stack, self.document
        layer = stack.layers.get(stack.active) if stack is not None and stack.active is not None else None
        if layer is None:
            self.unavailable.emit("Show a map layer (prediction, saliency or attention) to score it.")
            return
        annotations = doc.to_set() if doc is not None else None
        if annotations is None or not any(a.has_area for a in annotations):
            self.unavailable.emit("Draw or import annotations with an area to score the map against.")
            return
        self._running = self._version
        slide = self._slide_path() if self.tissue_only else None
        # The live values go uncopied: the worker copies them (a running job may still fill cells).
        self.runner.submit(score_layer_job, layer.values, layer.geometry, annotations, self.class_name, slide,
                           on_done=lambda r, key=str(layer.key): self._on_scored(key, r), on_error=self._on_failed)

    def _on_scored(self, layer: str, result: dict) -> None:
        stale = self._running != self._version
        self._running = None
        if stale:
            self._start()
            return
        self.last = {"layer": layer, **result}
        self.scored.emit(self.last)

    def _on_failed(self, message: str) -> None:
        self._running = None
        self.unavailable.emit(f"Scoring failed: {message}")

    def shutdown(self) -> None:
        self._timer.stop()
        self.runner.shutdown()
