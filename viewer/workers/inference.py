"""Inference jobs on one :class:`~viewer.workers.engine_worker.EngineWorker`, one at a time.

The UI thread freezes an :class:`~engine.specs.InferenceSpec`, and :meth:`InferenceJobs.submit`
gives the job a generation number and a cancel token, cancelling earlier jobs on the same
target (their maps would be overwritten anyway). Jobs on other targets wait in the worker's
queue: one job on the device at a time. On the worker, every ``MapPatch`` is split into display
layers and colour-mapped to BGRA with the styles current at that moment; patches of superseded
jobs are dropped on the UI thread.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.events import CancelToken, Event, Finished, MapPatch, Prediction, Progress
from engine.geometry import Box, MapGeometry
from engine.specs import InferenceSpec
from viewer.model.layers import LayerKey, LayerStyle, colourize, layer_keys
from viewer.model.overlays import ColouredPatch, LayerPatch, finite_range
from viewer.workers.engine_worker import EngineJob, EngineWorker, Relay
from viewer.workers.gc_pauses import import_engine

THREAD_PREFIX = "streamslide-inference"
#: Events waiting for the UI thread before the worker pauses.
MAX_INBOX = 512

#: ``run_inference``'s shape: blocking, events through the callback, honours the token.
Runner = Callable[[InferenceSpec, Callable[[Event], None], CancelToken], Finished]
#: Looks up a layer's current style; called on the worker, so it must only read immutable data.
StyleLookup = Callable[[LayerKey], LayerStyle]


def engine_runner(spec: InferenceSpec, on_event: Callable[[Event], None], cancel: CancelToken) -> Finished:
    """The real runner. Imported here, on the worker: ``engine.api`` loads torch."""
    import_engine()  # first, so torch's module objects are frozen (see viewer.workers.gc_pauses)
    from engine.api import run_inference

    return run_inference(spec, on_event, cancel)


@dataclass
class Job:
    """A submitted job, as the UI thread tracks it. ``target`` names what its maps overwrite
    (the slide's path); ``label`` says what it is for people; ``state`` is "queued", "running"
    or "done"."""

    job_id: int
    generation: int
    spec: InferenceSpec
    target: str
    style_for: StyleLookup
    label: str = ""
    token: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"
    superseded: bool = False


def colour_patch(patch: MapPatch, generation: int, style_for: StyleLookup) -> ColouredPatch:
    """Worker side: split a MapPatch into display layers and colour-map each one."""
    planes = patch.values if patch.values.ndim == 3 else patch.values[None]
    parts = []
    for key, plane in zip(layer_keys(patch.layer, patch.classes), planes, strict=True):
        plane = np.ascontiguousarray(plane, np.float32)
        style = style_for(key)
        parts.append(LayerPatch(key, plane, colourize(plane, style), style.version, *finite_range(plane)))
    geometry = MapGeometry(Box.of(patch.map_l0_box), tuple(patch.map_shape))
    map_r0, map_c0 = patch.cell_offset  # (row, col), like map_shape's (h, w)
    return ColouredPatch(generation, geometry, int(map_r0), int(map_c0), tuple(parts))


class InferenceJobs(QObject):
    """Queue and run inference jobs; public signals fire on the UI thread with the Job."""

    job_queued = Signal(object)
    job_started = Signal(object)
    progress = Signal(object, object)  # Job, Progress
    patch_ready = Signal(object, object)  # Job, ColouredPatch
    prediction = Signal(object, object)  # Job, Prediction
    job_finished = Signal(object, object)  # Job, Finished
    job_failed = Signal(object, str)  # Job, user-readable message

    def __init__(self, runner: Runner = engine_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._worker = EngineWorker(THREAD_PREFIX, MAX_INBOX, parent=self)
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        self.jobs: dict[int, Job] = {}  # queued and running, in submission order

    # -- UI thread API ---------------------------------------------------------------------
    @property
    def worker(self) -> EngineWorker:
        """The one worker of the viewer's model jobs (a cohort evaluation queues on it too)."""
        return self._worker

    def warm_up(self) -> None:
        """Import the engine on the worker now, ahead of the first job."""
        self._worker.warm_up()

    def submit(self, spec: InferenceSpec, style_for: StyleLookup, target: str | None = None, label: str = "") -> Job:
        """Queue ``spec``; jobs queued or running on the same ``target`` are cancelled."""
        if self._worker.closed:
            raise RuntimeError("InferenceJobs is shut down")
        target = target or spec.slide_path
        self.cancel_target(target)
        job = Job(next(self._ids), next(self._generations), spec, target, style_for, label)
        self.jobs[job.job_id] = job
        relays = {MapPatch: Relay(self._on_patch, lambda patch: colour_patch(patch, job.generation, job.style_for)),
                  Progress: Relay(self._on_progress), Prediction: Relay(self._on_prediction)}
        self._worker.submit(EngineJob(
            job.job_id, job.token, lambda on_event, token: self._runner(job.spec, on_event, token), relays,
            on_done=self._on_done, on_failed=self._on_failed, name=f"inference job {job.job_id}",
            doing="running the model", on_started=self._on_started, skip_if_cancelled=True))
        self.job_queued.emit(job)
        return job

    def cancel(self, job: Job | None = None) -> None:
        """Cancel ``job`` (default: the running one, else all queued ones). It stops at the
        engine's next tile check; what it finished is kept."""
        jobs = [job] if job is not None else [j for j in self.jobs.values() if j.state == "running"] or list(self.jobs.values())
        for j in jobs:
            j.token.cancel()

    def cancel_target(self, target: str) -> None:
        """Cancel and forget every job on ``target`` (superseded, or its slide was closed)."""
        for job in self.jobs.values():
            if job.target == target:
                job.superseded = True
                job.token.cancel()

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state == "running"), None)

    @property
    def queued(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "queued"]

    def shutdown(self) -> None:
        """Cancel everything and wait for the worker (only at shutdown)."""
        for job in self.jobs.values():
            job.superseded = True
            job.token.cancel()
        self._worker.shutdown()

    # -- back on the UI thread ----------------------------------------------------------------
    def _live(self, job_id: int) -> Job | None:
        job = self.jobs.get(job_id)
        return None if job is None or job.superseded or self._worker.closed else job

    def _on_started(self, job_id: int, _payload: None) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.state = "running"
            if not job.superseded and not self._worker.closed:
                self.job_started.emit(job)

    def _on_progress(self, job_id: int, progress: Progress) -> None:
        if (job := self._live(job_id)) is not None:
            self.progress.emit(job, progress)

    def _on_patch(self, job_id: int, patch: ColouredPatch) -> None:
        if (job := self._live(job_id)) is not None:  # a superseded job's patches would paint over its successor's
            self.patch_ready.emit(job, patch)

    def _on_prediction(self, job_id: int, prediction: Prediction) -> None:
        if (job := self._live(job_id)) is not None:
            self.prediction.emit(job, prediction)

    def _on_done(self, job_id: int, finished: Finished) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.state = "done"
            if not self._worker.closed:
                self.job_finished.emit(job, finished)

    def _on_failed(self, job_id: int, message: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.state = "done"
            if not self._worker.closed:
                self.job_failed.emit(job, message)
