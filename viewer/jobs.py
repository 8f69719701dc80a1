"""The viewer's only door to ``engine.api``: inference jobs on one worker, one at a time.

The UI thread freezes an :class:`~engine.events.InferenceSpec`, and :meth:`JobController.submit`
gives the job a generation number and a cancel token, cancelling earlier jobs on the same
target (their maps would be overwritten anyway). Jobs on other targets wait in a queue: one
job on the device at a time. On the worker, every ``MapPatch`` is split into display layers
and colour-mapped to BGRA with the styles current at that moment, then handed to the UI
thread through an inbox; patches of superseded jobs are dropped there.

Events reach the UI thread through a :class:`~viewer.inbox.UiInbox` (bounded, drained in short
turns), not one queued signal per event, which starved paints for seconds with fast jobs.
``engine.api`` (and with it torch) is imported on the worker, never by the viewer itself.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.errors import Cancelled, StreamSlideError
from engine.geometry import Box
from engine.events import CancelToken, Event, Finished, MapPatch, Prediction, Progress
from engine.specs import InferenceSpec
from viewer.colormaps import LayerStyle, colourize
from viewer.overlay import ColouredPatch, LayerPatch, MapGeometry, finite_range, layer_names
from viewer.gc_pauses import import_engine
from viewer.inbox import UiInbox
from viewer.tiles import lower_thread_priority

log = logging.getLogger(__name__)

THREAD_PREFIX = "streamslide-inference"
#: The UI thread spends at most this long per turn of the event loop on job events.
DRAIN_BUDGET_S = 0.008
#: Events waiting for the UI thread before the worker pauses.
MAX_INBOX = 512

#: ``run_inference``'s shape: blocking, events through the callback, honours the token.
Runner = Callable[[InferenceSpec, Callable[[Event], None], CancelToken], Finished]
#: Looks up a layer's current style; called on the worker, so it must only read immutable data.
StyleLookup = Callable[[str], LayerStyle]


def engine_runner(spec: InferenceSpec, on_event: Callable[[Event], None], cancel: CancelToken) -> Finished:
    """The real runner. Imported here, on the worker: ``engine.api`` loads torch."""
    import_engine()  # first, so torch's module objects are frozen (see viewer.gc_pauses)
    from engine.api import run_inference

    return run_inference(spec, on_event, cancel)


@dataclass
class Job:
    """A submitted job, as the UI thread tracks it. ``target`` names what its maps overwrite
    (the slide's path); ``state`` is "queued", "running" or "done"."""

    job_id: int
    generation: int
    spec: InferenceSpec
    target: str
    style_for: StyleLookup
    token: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"
    superseded: bool = False


def run_to_outcome(run: Callable[[], Finished], logger: logging.Logger, name: str, doing: str) -> Finished | str:
    """Worker side: what a job's runner ended with, for the UI. A cancel is a cancelled
    ``Finished``; an engine error, a file error or a bad value is its own message (they say what
    to do); anything else is a bug, logged with its traceback and reported as an internal error."""
    try:
        return run()
    except Cancelled:
        return Finished(cancelled=True)
    except (StreamSlideError, OSError, ValueError) as exc:
        return str(exc)
    except Exception as exc:
        logger.exception("%s failed", name)
        return f"internal error while {doing}: {exc!r}"


def colour_patch(patch: MapPatch, generation: int, style_for: StyleLookup) -> ColouredPatch:
    """Worker side: split a MapPatch into display layers and colour-map each one."""
    planes = patch.values if patch.values.ndim == 3 else patch.values[None]
    parts = []
    for name, plane in zip(layer_names(patch.layer, patch.classes), planes):
        plane = np.ascontiguousarray(plane, np.float32)
        style = style_for(name)
        parts.append(LayerPatch(name, plane, colourize(plane, style), style.version, *finite_range(plane)))
    geometry = MapGeometry(Box(*patch.map_l0_box), tuple(patch.map_shape))
    map_r0, map_c0 = patch.cell_offset  # (row, col), like map_shape's (h, w)
    return ColouredPatch(generation, geometry, int(map_r0), int(map_c0), tuple(parts))


class _WorkerEvents:
    """The ``on_event`` callback a job gets; runs on the worker thread."""

    def __init__(self, controller: "JobController", job: Job) -> None:
        self.controller, self.job = controller, job

    def __call__(self, event: Event) -> None:
        job_id = self.job.job_id
        if isinstance(event, MapPatch):
            self.controller._post(self.controller._on_patch, job_id, colour_patch(event, self.job.generation, self.job.style_for), self.job.token)
        elif isinstance(event, Progress):
            self.controller._post(self.controller._on_progress, job_id, event, self.job.token)
        elif isinstance(event, Prediction):
            self.controller._post(self.controller._on_prediction, job_id, event, self.job.token)
        # Finished is also the runner's return value, which is what ends the job.


class JobController(QObject):
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
        # One worker: at most one job on the device; the executor's queue is the job queue.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX, initializer=lower_thread_priority)
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        self.jobs: dict[int, Job] = {}  # queued and running, in submission order
        self._closed = False
        self._inbox = UiInbox(MAX_INBOX, DRAIN_BUDGET_S, parent=self)

    # -- UI thread API ---------------------------------------------------------------------
    def warm_up(self) -> None:
        """Import the engine on the worker now, ahead of the first job (see
        :func:`viewer.gc_pauses.import_engine`); a job submitted meanwhile waits behind it."""
        if not self._closed:
            self._pool.submit(import_engine)

    def submit(self, spec: InferenceSpec, style_for: StyleLookup, target: str | None = None) -> Job:
        """Queue ``spec``; jobs queued or running on the same ``target`` are cancelled."""
        if self._closed:
            raise RuntimeError("JobController is shut down")
        target = target or spec.slide_path
        for old in self.jobs.values():
            if old.target == target:
                old.superseded = True
                old.token.cancel()
        job = Job(next(self._ids), next(self._generations), spec, target, style_for)
        self.jobs[job.job_id] = job
        self._pool.submit(self._run, job)
        self.job_queued.emit(job)
        return job

    def cancel(self, job: Job | None = None) -> None:
        """Cancel ``job`` (default: the running one, else all queued ones). It stops at the
        engine's next tile check; what it finished is kept."""
        jobs = [job] if job is not None else [j for j in self.jobs.values() if j.state == "running"] or list(self.jobs.values())
        for j in jobs:
            j.token.cancel()

    def cancel_target(self, target: str) -> None:
        """Cancel and forget every job on ``target`` (its slide was closed)."""
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
        self._closed = True
        for job in self.jobs.values():
            job.superseded = True
            job.token.cancel()
        self._inbox.close()  # a worker waiting for room sees the cancel
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- worker ------------------------------------------------------------------------------
    def _post(self, handler: Callable, job_id: int, payload: object, token: CancelToken | None = None) -> None:
        """Worker side: queue ``handler(job_id, payload)`` for the UI thread."""
        self._inbox.post(handler, job_id, payload, token)

    def _run(self, job: Job) -> None:
        if job.token.cancelled:  # cancelled while queued: never touch the device
            self._post(self._on_done, job.job_id, Finished(cancelled=True))
            return
        self._post(self._on_started, job.job_id, None)
        outcome = run_to_outcome(lambda: self._runner(job.spec, _WorkerEvents(self, job), job.token),
                                 log, f"inference job {job.job_id}", "running the model")
        if isinstance(outcome, str):
            self._post(self._on_failed, job.job_id, outcome)
        else:
            self._post(self._on_done, job.job_id, outcome)

    # -- back on the UI thread ----------------------------------------------------------------
    def _live(self, job_id: int) -> Job | None:
        job = self.jobs.get(job_id)
        return None if job is None or job.superseded or self._closed else job

    def _on_started(self, job_id: int, _payload: None) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.state = "running"
            if not job.superseded and not self._closed:
                self.job_started.emit(job)

    def _on_progress(self, job_id: int, progress: Progress) -> None:
        job = self._live(job_id)
        if job is not None:
            self.progress.emit(job, progress)

    def _on_patch(self, job_id: int, patch: ColouredPatch) -> None:
        job = self._live(job_id)
        if job is not None:  # a superseded job's patches would paint over its successor's
            self.patch_ready.emit(job, patch)

    def _on_prediction(self, job_id: int, prediction: Prediction) -> None:
        job = self._live(job_id)
        if job is not None:
            self.prediction.emit(job, prediction)

    def _on_done(self, job_id: int, finished: Finished) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.state = "done"
            if not self._closed:
                self.job_finished.emit(job, finished)

    def _on_failed(self, job_id: int, message: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.state = "done"
            if not self._closed:
                self.job_failed.emit(job, message)
