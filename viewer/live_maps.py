"""Live model maps, composed: the model, job and overlay panels, the job controller, one
overlay stack per open slide, the value readout, and map export/reload.

The main window creates one :class:`LiveMaps`, docks its panels, adds its actions to a menu
and tells it which slide is shown. Everything slow (model cards, re-colouring, map files,
inference) runs on workers; results come back to bound methods on the UI thread.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import numpy as np
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from engine.geometry import Box
from engine.events import Finished, Prediction, Progress
from engine.specs import InferenceSpec
from viewer.background import BackgroundRunner
from viewer.jobs import Job, JobController, Runner, engine_runner
from viewer.overlay import MapGeometry, OverlayStack, finite_range, layer_names
from viewer.slide_view import SlideView
from viewer.state import RecentFiles
from viewer.widgets.job_panel import JobPanel
from viewer.widgets.model_panel import ModelPanel
from viewer.widgets.overlay_panel import OverlayPanel

PREDICTION_PREFIX = "prediction: "


def read_card(path: str) -> tuple[str, object]:
    """Worker job: a model's card (JSON only; ``engine.api`` is imported here, off the UI thread)."""
    from engine.api import read_model_card

    return path, read_model_card(path)


def write_maps_job(out_dir: str, planes: dict[str, tuple[list[np.ndarray], tuple]], slide_path: str,
                   classes: tuple[str, ...], prediction: Prediction | None) -> dict[str, str]:
    """Worker job: stack display planes back into engine layers and write them."""
    from engine.io.maps import MapLayer, write_maps

    layers = {name: MapLayer(np.stack(arrays) if name == "prediction" else arrays[0], l0_box) for name, (arrays, l0_box) in planes.items()}
    return write_maps(out_dir, layers, slide_path=slide_path, classes=classes, prediction=prediction)


def read_maps_job(path: str) -> tuple[str, list[tuple[str, MapGeometry, np.ndarray, tuple[float, float]]]]:
    """Worker job: read ``maps.npz`` into display layers (name, geometry, values, value range)."""
    from engine.io.maps import read_maps

    layers, meta = read_maps(path)
    classes = tuple(meta.get("classes", ()))
    out = []
    for source, layer in layers.items():
        planes = layer.values if layer.values.ndim == 3 else layer.values[None]
        geometry = MapGeometry(Box(*layer.l0_box), planes.shape[1:])
        for name, plane in zip(layer_names(source, classes or tuple(str(k) for k in range(len(planes)))), planes):
            plane = np.ascontiguousarray(plane, np.float32)
            out.append((name, geometry, plane, finite_range(plane)))
    return path, out


class LiveMaps(QObject):
    card_loaded = Signal(str)
    job_started = Signal(object)
    job_finished = Signal(object, object)  # Job, Finished
    job_failed = Signal(object, str)
    maps_written = Signal(dict)
    maps_loaded = Signal(str)
    layer_revealed = Signal(str, str)  # slide path, layer name

    def __init__(self, view: SlideView, report_error: Callable[[str], None], settings: QSettings,
                 runner: Runner = engine_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.view, self.report_error, self.settings = view, report_error, settings
        self.background = BackgroundRunner(workers=1, parent=self)  # cards, re-colouring, map files
        self.jobs = JobController(runner, parent=self)
        self.stacks: dict[str, OverlayStack] = {}
        self.predictions: dict[str, Prediction] = {}
        self.slide_path: str | None = None
        self._descriptions: dict[int, str] = {}
        self._load_generations = itertools.count(-1, -1)  # reloaded maps: never a job's number
        self.recent_models = RecentFiles(list(settings.value("recent_models", []) or []))

        self.model_panel = ModelPanel()
        self.job_panel = JobPanel()
        self.overlay_panel = OverlayPanel()
        self.readout = QLabel()
        self.model_widget = QWidget()
        column = QVBoxLayout(self.model_widget)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.model_panel, 1)
        column.addWidget(self.job_panel)
        self.model_panel.set_recent(self.recent_models.paths)

        self.export_maps_action = QAction("Export &maps (.npz, TIFF)…", self)
        self.load_maps_action = QAction("&Load maps as overlay…", self)
        self.load_model_action = QAction("Load &model…", self)
        self.export_maps_action.triggered.connect(self.choose_export_maps)
        self.load_maps_action.triggered.connect(self.choose_load_maps)
        self.load_model_action.triggered.connect(self.model_panel.choose_model)

        self.model_panel.model_chosen.connect(self.load_model)
        self.model_panel.run_requested.connect(self.run)
        self.model_panel.region_mode_toggled.connect(self.view.set_region_mode)
        self.view.region_drawn.connect(self._on_region_drawn)
        self.view.cursor_moved.connect(self._on_cursor_moved)
        self.job_panel.cancel_button.clicked.connect(self.cancel)
        self.jobs.job_queued.connect(self._show_queue)
        self.jobs.job_started.connect(self._on_job_started)
        self.jobs.progress.connect(self._on_progress)
        self.jobs.patch_ready.connect(self._on_patch)
        self.jobs.prediction.connect(self._on_prediction)
        self.jobs.job_finished.connect(self._on_job_finished)
        self.jobs.job_failed.connect(self._on_job_failed)
        self._update_actions()

    @property
    def actions(self) -> list[QAction]:
        return [self.load_model_action, self.export_maps_action, self.load_maps_action]

    # -- slides ---------------------------------------------------------------------------------
    def stack_for(self, path: str) -> OverlayStack:
        if path not in self.stacks:
            self.stacks[path] = OverlayStack(self.background.submit, parent=self)
        return self.stacks[path]

    def reveal_when_ready(self, path: str, layer: str = "saliency", job: Job | None = None) -> None:
        """Make ``layer`` of ``path``'s overlays the shown and selected one, hiding the others
        (ticking them in the Overlays panel shows them again), as soon as it exists: with a
        ``job``, once that job's first patch of it arrives (saliency comes after the forward
        pass; a queued job's start clears the layers of the one before)."""
        stack = self.stack_for(path)

        def reveal() -> None:
            if layer not in stack.layers:
                return
            stack.layers_changed.disconnect(reveal)
            for name in stack.layers:
                if name != layer and stack.style_for(name).visible:
                    stack.set_style(name, visible=False)
            stack.set_style(layer, visible=True)
            stack.set_active(layer)
            if stack is self.stack:
                self.overlay_panel.refresh()  # selects the active layer
            self.layer_revealed.emit(path, layer)

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

    @property
    def stack(self) -> OverlayStack | None:
        return self.stacks.get(self.slide_path) if self.slide_path else None

    def set_slide(self, path: str | None) -> None:
        """Show the overlays of ``path`` (None: no slide) in the view and the panel."""
        old = self.stack
        if old is not None:
            self.view.remove_overlay(old)
            old.changed.disconnect(self.view.update_l0_box)
        self.slide_path = path
        stack = self.stack_for(path) if path else None
        if stack is not None:
            self.view.add_overlay(stack)
            stack.changed.connect(self.view.update_l0_box)
        self.overlay_panel.set_stack(stack)
        self._update_actions()

    def slide_closed(self, path: str) -> None:
        self.jobs.cancel_target(path)
        if path == self.slide_path:
            self.set_slide(None)
        self.stacks.pop(path, None)
        self.predictions.pop(path, None)

    def _update_actions(self) -> None:
        has_layers = bool(self.stack and self.stack.layers)
        self.export_maps_action.setEnabled(has_layers)
        self.load_maps_action.setEnabled(self.slide_path is not None)
        self.model_panel.set_runnable(self.slide_path is not None)

    # -- model ----------------------------------------------------------------------------------
    def load_model(self, path: str) -> None:
        self.background.submit(read_card, path, on_done=self._on_card, on_error=self._on_card_error)

    def _on_card(self, result: tuple[str, object]) -> None:
        path, card = result
        self.recent_models.add(path)
        self.settings.setValue("recent_models", self.recent_models.paths)
        self.model_panel.set_recent(self.recent_models.paths)
        self.model_panel.show_card(path, card)
        self._update_actions()
        self.jobs.warm_up()  # torch's import holds the GIL for ~200 ms: now, not when Run is pressed
        self.card_loaded.emit(path)

    def _on_card_error(self, message: str) -> None:
        self.model_panel.show_card_error(message)
        self.report_error(f"Could not load the model.\n\n{message}")

    # -- running --------------------------------------------------------------------------------
    def run(self, scope: str, l0_region: Box | None = None) -> Job | None:
        """Queue a run on the shown slide: "slide", "view", or "region" with ``l0_region``."""
        if self.slide_path is None or self.model_panel.model_path is None:
            return None
        if scope == "region" and l0_region is None:
            self.model_panel.region_button.setChecked(True)  # the drawn rectangle starts it
            return None
        if scope == "view":
            vp = self.view.viewport
            l0_region = vp.l0_visible_box().intersect(Box(0, 0, vp.l0_width, vp.l0_height)).outer_int()
        region = None if l0_region is None else tuple(int(v) for v in (l0_region.x0, l0_region.y0, l0_region.x1, l0_region.y1))
        # On the whole slide, the map starts where the user is looking (exact in any block order).
        vis = self.view.viewport.l0_visible_box()
        priority = (vis.x0, vis.y0, vis.x1, vis.y1) if scope == "slide" else None
        spec = InferenceSpec(
            slide_path=self.slide_path, model_path=self.model_panel.model_path, l0_region=region,
            device=self.model_panel.device.currentText(), saliency=self.model_panel.saliency.isChecked(),
            priority_l0_box=priority, low_memory=self.model_panel.low_memory.isChecked(),
        )
        job = self.jobs.submit(spec, self.stack_for(self.slide_path).style_for, target=self.slide_path)
        self._descriptions[job.job_id] = f"{Path(self.slide_path).name} · {scope}"
        return job

    def _on_region_drawn(self, l0_box: Box) -> None:
        self.model_panel.region_done()
        self.run("region", l0_box)

    def cancel(self) -> None:
        self.jobs.cancel()

    def _describe(self, job: Job) -> str:
        return self._descriptions.get(job.job_id, Path(job.spec.slide_path).name)

    def _show_queue(self, _job: Job | None = None) -> None:
        self.job_panel.set_queue(len(self.jobs.queued))

    def _on_job_started(self, job: Job) -> None:
        self.stack_for(job.target).begin(job.generation)
        self.predictions.pop(job.target, None)
        self.job_panel.job_started(self._describe(job))
        self._show_queue()
        self.job_started.emit(job)

    def _on_progress(self, job: Job, progress: Progress) -> None:
        self.job_panel.show_progress(self._describe(job), progress)

    def _on_patch(self, job: Job, patch) -> None:
        stack = self.stacks.get(job.target)
        if stack is not None and stack.add_patch(patch) and job.target == self.slide_path:
            self.export_maps_action.setEnabled(True)

    def _on_prediction(self, job: Job, prediction: Prediction) -> None:
        self.predictions[job.target] = prediction
        self.job_panel.show_prediction(prediction)

    def _on_job_finished(self, job: Job, finished: Finished) -> None:
        text = "Cancelled (finished tiles kept)" if finished.cancelled else "Done"
        self.job_panel.job_ended(f"{text}: {self._describe(job)}")
        self._descriptions.pop(job.job_id, None)
        self._show_queue()
        self.job_finished.emit(job, finished)

    def _on_job_failed(self, job: Job, message: str) -> None:
        self.job_panel.job_ended(f"Failed: {self._describe(job)}")
        self._descriptions.pop(job.job_id, None)
        self._show_queue()
        self.report_error(f"The model run on {Path(job.spec.slide_path).name} failed.\n\n{message}")
        self.job_failed.emit(job, message)

    # -- readout --------------------------------------------------------------------------------
    def _on_cursor_moved(self, l0_point) -> None:
        stack = self.stack
        values = stack.values_at(*l0_point) if stack is not None and l0_point is not None else []
        self.readout.setText("  ·  ".join(f"{name.removeprefix(PREDICTION_PREFIX)} {value:.3g}" for name, value in values))

    # -- map files ------------------------------------------------------------------------------
    def choose_export_maps(self) -> None:
        folder = QFileDialog.getExistingDirectory(None, "Export maps to a folder")
        if folder:
            self.export_maps(folder)

    def export_maps(self, out_dir: str) -> None:
        """Write the shown slide's maps (``maps_written`` with the paths when done)."""
        stack = self.stack
        if stack is None or not stack.layers:
            return
        classes = tuple(n.removeprefix(PREDICTION_PREFIX) for n in stack.layers if n.startswith(PREDICTION_PREFIX))
        planes: dict[str, tuple[list[np.ndarray], tuple]] = {}
        for name, layer in stack.layers.items():
            source = "prediction" if name.startswith(PREDICTION_PREFIX) else name
            box = layer.geometry.l0_box
            # The float maps go uncopied: a running job may still fill cells while they are
            # written, and the file then holds the cells finished by that moment.
            planes.setdefault(source, ([], (box.x0, box.y0, box.x1, box.y1)))[0].append(layer.values)
        self.background.submit(write_maps_job, out_dir, planes, self.slide_path, classes, self.predictions.get(self.slide_path),
                               on_done=self.maps_written.emit, on_error=self._on_maps_error)

    def choose_load_maps(self) -> None:
        path, _ = QFileDialog.getOpenFileName(None, "Load maps as overlay", "", "StreamSlide maps (maps.npz *.npz)")
        if path:
            self.load_maps(path)

    def load_maps(self, path: str) -> None:
        self.background.submit(read_maps_job, path, on_done=self._on_maps_read, on_error=self._on_maps_error)

    def _on_maps_read(self, result) -> None:
        path, layers = result
        if self.slide_path is None:
            return
        self.jobs.cancel_target(self.slide_path)  # a running job would paint over the file's maps
        stack = self.stack_for(self.slide_path)
        stack.begin(next(self._load_generations))
        for name, geometry, values, value_range in layers:
            stack.add_layer(name, geometry, values, value_range)
        self._update_actions()
        self.maps_loaded.emit(path)

    def _on_maps_error(self, message: str) -> None:
        self.report_error(f"Map files: {message}")

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.jobs.shutdown()
        self.background.shutdown()
