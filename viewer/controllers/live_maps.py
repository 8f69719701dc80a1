"""Live model maps: model cards, inference runs on the shown slide, one overlay stack per open
slide, and map export and reload.

The controller reads the models (:class:`~viewer.model.inference.InferenceSettings`,
:class:`~viewer.model.inference.ModelChoice` and the shown slide's viewport in the
:class:`~viewer.model.workspace.Workspace`) and reports through Qt signals; it never touches a
widget. Everything slow (model cards, re-colouring, map files, inference) runs on workers;
results come back to bound methods on the UI thread.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from engine.events import Finished, Prediction
from engine.geometry import Box
from viewer.model.inference import AnnotationScope, InferenceSettings, ModelChoice, card_masks_tissue, scoped_spec
from viewer.model.layers import PREDICTION, SALIENCY, LayerKey
from viewer.model.overlays import ColouredPatch, OverlayStack
from viewer.model.workspace import OpenSlide, Workspace
from viewer.workers.background import BackgroundRunner
from viewer.workers.inference import InferenceJobs, Job, Runner, engine_runner
from viewer.workers.map_files import read_card, read_maps_job, write_maps_job


def call_soon(callback: Callable[[], None]) -> None:
    """Run ``callback`` on this (the UI) thread once the event loop turns."""
    QTimer.singleShot(0, callback)


class LiveMaps(QObject):
    card_loaded = Signal(str)
    job_started = Signal(object)  # Job
    job_progress = Signal(object, object)  # Job, Progress
    prediction_ready = Signal(object, object)  # Job, Prediction
    job_finished = Signal(object, object)  # Job, Finished
    job_failed = Signal(object, str)
    queue_changed = Signal(int)  # jobs waiting
    maps_written = Signal(dict)
    maps_loaded = Signal(str)
    layer_revealed = Signal(str, object)  # slide path, LayerKey
    stack_shown = Signal(object)  # the shown slide's OverlayStack, or None
    #: Whether maps can be exported or loaded changed (see :attr:`can_export_maps`).
    availability_changed = Signal()

    def __init__(self, workspace: Workspace, settings: InferenceSettings, model: ModelChoice,
                 report_error: Callable[[str], None], runner: Runner = engine_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workspace, self.settings, self.model, self.report_error = workspace, settings, model, report_error
        self.background = BackgroundRunner(workers=1, parent=self)  # cards, re-colouring, map files
        self.jobs = InferenceJobs(runner, parent=self)
        self.stacks: dict[str, OverlayStack] = {}
        self.predictions: dict[str, Prediction] = {}
        self.slide_path: str | None = None
        self._load_generations = itertools.count(-1, -1)  # reloaded maps: never a job's number
        #: The shown slide's annotations as runs take them (selection, excluded classes); the
        #: window sets it to the annotations controller's ``run_scope``.
        self.annotation_scope: Callable[[], AnnotationScope | None] = lambda: None

        workspace.current_changed.connect(self._on_current_slide)
        workspace.slide_removed.connect(self._on_slide_removed)
        self.jobs.job_queued.connect(self._show_queue)
        self.jobs.job_started.connect(self._on_job_started)
        self.jobs.progress.connect(self.job_progress)
        self.jobs.patch_ready.connect(self._on_patch)
        self.jobs.prediction.connect(self._on_prediction)
        self.jobs.job_finished.connect(self._on_job_finished)
        self.jobs.job_failed.connect(self._on_job_failed)

    # -- slides ---------------------------------------------------------------------------------
    def stack_for(self, path: str) -> OverlayStack:
        if path not in self.stacks:
            self.stacks[path] = OverlayStack(self.background.submit, call_soon)
        return self.stacks[path]

    @property
    def stack(self) -> OverlayStack | None:
        return self.stacks.get(self.slide_path) if self.slide_path else None

    @property
    def can_export_maps(self) -> bool:
        return bool(self.stack and self.stack.layers)

    @property
    def can_load_maps(self) -> bool:
        return self.slide_path is not None

    def _on_current_slide(self, entry: OpenSlide | None) -> None:
        """Show the overlays of the shown slide (None: no slide)."""
        self.slide_path = entry.key if entry is not None else None
        self.stack_shown.emit(self.stack_for(self.slide_path) if self.slide_path else None)
        self.model.set_has_slide(self.slide_path is not None)
        self.availability_changed.emit()

    def _on_slide_removed(self, entry: OpenSlide) -> None:
        self.jobs.cancel_target(entry.key)
        self.stacks.pop(entry.key, None)
        self.predictions.pop(entry.key, None)

    def reveal_when_ready(self, path: str, key: LayerKey = SALIENCY, job: Job | None = None) -> None:
        """Make ``key`` of ``path``'s overlays the shown and selected one, hiding the others
        (ticking them in the Overlays panel shows them again), as soon as it exists: with a
        ``job``, once that job's first patch of it arrives (saliency comes after the forward
        pass; a queued job's start clears the layers of the one before)."""
        stack = self.stack_for(path)

        def reveal() -> None:
            if key not in stack.layers:
                return
            stack.layers_changed.disconnect(reveal)
            stack.show_only(key)  # the Overlays panel follows: it selects the active layer
            self.layer_revealed.emit(path, key)

        def arm(started: Job | None = None) -> None:
            if started is not None:
                if started.job_id != job.job_id:
                    return
                self.job_started.disconnect(arm)
            stack.layers_changed.connect(reveal)
            reveal()

        if job is not None and job.state == "queued":
            self.job_started.connect(arm)
        else:
            arm()

    # -- model ----------------------------------------------------------------------------------
    def load_model(self, path: str) -> None:
        self.background.submit(read_card, path, on_done=self._on_card, on_error=self._on_card_error)

    def _on_card(self, result: tuple[str, object]) -> None:
        path, card = result
        self.model.loaded(path, card)
        self.settings.set(tissue_mask=card_masks_tissue(card))  # the model's own setting, until the user changes it
        self.jobs.warm_up()  # torch's import holds the GIL for ~200 ms: now, not when Run is pressed
        self.card_loaded.emit(path)

    def _on_card_error(self, message: str) -> None:
        self.model.failed(message)
        self.report_error(f"Could not load the model.\n\n{message}")

    # -- running --------------------------------------------------------------------------------
    def run(self, scope: str, l0_region: Box | None = None) -> Job | None:
        """Queue a run on the shown slide with the current settings: "slide", "view",
        "region" with ``l0_region`` (without one, the next rectangle drawn on the view starts it),
        or "selection" (inside the selected annotations); the classes marked exclude are taken out
        of every scope (:func:`~viewer.model.inference.scoped_spec`)."""
        if self.slide_path is None or self.model.path is None:
            return None
        if scope == "region" and l0_region is None:
            self.settings.set(region_mode=True)
            return None
        viewport = self.workspace.slides[self.slide_path].viewport
        try:
            spec = scoped_spec(scope, self.slide_path, self.model.path, self.settings, viewport, l0_region,
                               self.annotation_scope())
        except ValueError as exc:  # e.g. the selection has no area (the button is disabled then)
            self.report_error(f"The model run did not start: {exc}")
            return None
        return self.jobs.submit(spec, self.stack_for(self.slide_path).style_for, target=self.slide_path,
                                label=f"{Path(self.slide_path).name} · {scope}")

    def run_region(self, l0_box: Box) -> Job | None:
        """A rectangle was drawn on the view: leave region mode and run on it."""
        self.settings.set(region_mode=False)
        return self.run("region", l0_box)

    def cancel(self) -> None:
        self.jobs.cancel()

    def _show_queue(self, _job: Job | None = None) -> None:
        self.queue_changed.emit(len(self.jobs.queued))

    def _on_job_started(self, job: Job) -> None:
        self.stack_for(job.target).begin(job.generation)
        self.predictions.pop(job.target, None)
        self._show_queue()
        self.job_started.emit(job)

    def _on_patch(self, job: Job, patch: ColouredPatch) -> None:
        stack = self.stacks.get(job.target)
        if stack is not None and stack.add_patch(patch) and job.target == self.slide_path:
            self.availability_changed.emit()

    def _on_prediction(self, job: Job, prediction: Prediction) -> None:
        self.predictions[job.target] = prediction
        self.prediction_ready.emit(job, prediction)

    def _on_job_finished(self, job: Job, finished: Finished) -> None:
        self._show_queue()
        self.job_finished.emit(job, finished)

    def _on_job_failed(self, job: Job, message: str) -> None:
        self._show_queue()
        self.job_failed.emit(job, message)
        self.report_error(f"The model run on {Path(job.spec.slide_path).name} failed.\n\n{message}")

    # -- readout --------------------------------------------------------------------------------
    def values_at(self, l0_point: tuple[float, float] | None) -> list[tuple[LayerKey, float]]:
        """The visible layers' values under a level-0 point of the shown slide."""
        stack = self.stack
        return stack.values_at(*l0_point) if stack is not None and l0_point is not None else []

    # -- map files ------------------------------------------------------------------------------
    def export_maps(self, out_dir: str) -> None:
        """Write the shown slide's maps (``maps_written`` with the paths when done)."""
        stack = self.stack
        if stack is None or not stack.layers:
            return
        classes = tuple(key.class_name for key in stack.layers if key.source == PREDICTION)
        planes: dict[str, tuple[list, tuple]] = {}
        for key, layer in stack.layers.items():
            # The float maps go uncopied: a running job may still fill cells while they are
            # written, and the file then holds the cells finished by that moment.
            planes.setdefault(key.source, ([], layer.geometry.l0_box.as_tuple()))[0].append(layer.values)
        # The slide's size and MPP (header fields, no pixel read) register the TIFFs to the slide.
        source = self.workspace.slides[self.slide_path].shared.source
        self.background.submit(write_maps_job, out_dir, planes, self.slide_path, classes, self.predictions.get(self.slide_path),
                               tuple(source.dimensions), source.mpp[0] if source.mpp else None,
                               on_done=self.maps_written.emit, on_error=self._on_maps_error)

    def load_maps(self, path: str) -> None:
        self.background.submit(read_maps_job, path, on_done=self._on_maps_read, on_error=self._on_maps_error)

    def _on_maps_read(self, result) -> None:
        path, layers = result
        if self.slide_path is None:
            return
        self.jobs.cancel_target(self.slide_path)  # a running job would paint over the file's maps
        stack = self.stack_for(self.slide_path)
        stack.begin(next(self._load_generations))
        for key, geometry, values, value_range in layers:
            stack.add_layer(key, geometry, values, value_range)
        self.availability_changed.emit()
        self.maps_loaded.emit(path)

    def _on_maps_error(self, message: str) -> None:
        self.report_error(f"Map files: {message}")

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.jobs.shutdown()
        self.background.shutdown()
