"""The viewer's only door to ``engine.api.run_training``: one training run at a time, on a worker.

The UI thread freezes a :class:`~engine.events.TrainingSpec` and :meth:`TrainingController.start`
runs it on a dedicated worker thread with a cancel token and a generation number. Events come
back the way inference events do (see ``viewer/jobs.py``): the worker appends to a bounded inbox
and posts one wake-up; the UI thread drains it in short turns, so even a run that reports
thousands of steps a second never starves timers and paints. Events of an older generation
(a run the user already stopped and replaced) are dropped.

Pause and resume: the engine has no pause. A pause is a cancel (the engine saves ``last/`` at
the next step) remembered as "paused"; resume starts the same spec again with ``resume=True``,
which the engine continues exactly (same data order, optimiser and RNG state).
``engine.api`` (and torch) is imported on the worker only.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engine.events import CancelToken, CheckpointSaved, Event, Finished, Metrics, Progress, StepSkipped
from engine.specs import TrainingSpec
from viewer.gc_pauses import import_engine
from viewer.inbox import UiInbox
from viewer.jobs import run_to_outcome
from viewer.tiles import lower_thread_priority

log = logging.getLogger(__name__)

THREAD_PREFIX = "streamslide-training"
#: The UI thread spends at most this long per turn of the event loop on training events.
DRAIN_BUDGET_S = 0.008
#: Events waiting for the UI thread before the worker pauses (it checks its token meanwhile).
MAX_INBOX = 256

#: ``run_training``'s shape: blocking, events through the callback, honours the token.
TrainRunner = Callable[[TrainingSpec, Callable[[Event], None], CancelToken], Finished]


def engine_train_runner(spec: TrainingSpec, on_event: Callable[[Event], None], cancel: CancelToken) -> Finished:
    """The real runner. Imported here, on the worker: ``engine.api`` loads torch lazily."""
    import_engine()  # first, so torch's module objects are frozen (see viewer.gc_pauses)
    from engine.api import run_training

    return run_training(spec, on_event, cancel)


@dataclass
class TrainingRun:
    """One start of a run as the UI tracks it. ``state``: "running", then "stopping" (a cancel or
    pause was asked), then "done", "paused", "cancelled" or "failed". A resume is a new
    ``TrainingRun`` on the same ``spec.out_dir``."""

    generation: int
    spec: TrainingSpec
    token: CancelToken = field(default_factory=CancelToken)
    state: str = "running"
    pausing: bool = False
    started_at: float = field(default_factory=time.perf_counter)


class TrainingController(QObject):
    """Start, pause, resume and cancel a training run; signals fire on the UI thread."""

    started = Signal(object)  # TrainingRun
    progress = Signal(object, object)  # TrainingRun, Progress
    metrics = Signal(object, object)  # TrainingRun, Metrics
    checkpoint_saved = Signal(object, object)  # TrainingRun, CheckpointSaved
    step_skipped = Signal(object, object)  # TrainingRun, StepSkipped
    finished = Signal(object, object)  # TrainingRun, Finished (its state says done/paused/cancelled)
    failed = Signal(object, str)  # TrainingRun, user-readable message


    def __init__(self, runner: TrainRunner = engine_train_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        # One worker: one run at a time, and a run never shares its thread with anything else.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX,
                                        initializer=lower_thread_priority)
        self._generations = itertools.count(1)
        self.run: TrainingRun | None = None  # the latest run, finished or not
        self._future: Future | None = None
        self._closed = False
        self._inbox = UiInbox(MAX_INBOX, DRAIN_BUDGET_S, parent=self)

    # -- UI thread API ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """A run is on the worker (running or stopping)."""
        return self.run is not None and self.run.state in ("running", "stopping")

    @property
    def paused(self) -> bool:
        return self.run is not None and self.run.state == "paused"

    def warm_up(self) -> None:
        """Import the engine on the worker now, ahead of Start (see :func:`viewer.gc_pauses.import_engine`)."""
        if not self._closed and not self.active:
            self._pool.submit(import_engine)

    def start(self, spec: TrainingSpec) -> TrainingRun:
        if self._closed:
            raise RuntimeError("TrainingController is shut down")
        if self.active:
            raise RuntimeError("a training run is already active; cancel or pause it first")
        run = TrainingRun(next(self._generations), spec)
        self.run = run
        self._future = self._pool.submit(self._work, run)
        self.started.emit(run)
        return run

    def pause(self) -> None:
        """Save ``last/`` at the next step and stop; :meth:`resume` continues exactly from there."""
        if self.active:
            self.run.pausing = True
            self.run.state = "stopping"
            self.run.token.cancel()

    def resume(self) -> TrainingRun | None:
        """Start the paused (or cancelled) run again from its ``last/`` checkpoint."""
        if self.run is None or self.active or self.run.state not in ("paused", "cancelled"):
            return None
        return self.start(dataclasses.replace(self.run.spec, resume=True))

    def cancel(self) -> None:
        """Stop the run; the engine saves ``last/`` at its next step (or tile)."""
        if self.active:
            self.run.pausing = False
            self.run.state = "stopping"
            self.run.token.cancel()

    def shutdown(self) -> None:
        """Cancel (the engine saves ``last/``) and wait for the worker; only at shutdown."""
        self._closed = True
        if self.run is not None:
            self.run.token.cancel()
        self._inbox.close()  # a worker waiting for room sees the cancel
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- worker ------------------------------------------------------------------------------
    def _post(self, handler: Callable, generation: int, payload: object, token: CancelToken | None = None) -> None:
        self._inbox.post(handler, generation, payload, token)

    def _on_event_from_worker(self, run: TrainingRun, event: Event) -> None:
        handler = {Progress: self._on_progress, Metrics: self._on_metrics, CheckpointSaved: self._on_checkpoint,
                   StepSkipped: self._on_skipped}.get(type(event))
        if handler is not None:  # Finished is also the return value, which is what ends the run
            self._post(handler, run.generation, event, run.token)

    def _work(self, run: TrainingRun) -> None:
        def on_event(event: Event) -> None:
            self._on_event_from_worker(run, event)

        outcome = run_to_outcome(lambda: self._runner(run.spec, on_event, run.token),
                                 log, f"training run {run.generation}", "training")
        if isinstance(outcome, str):
            self._post(self._on_failed, run.generation, outcome)
        else:
            self._post(self._on_done, run.generation, outcome)

    # -- back on the UI thread ----------------------------------------------------------------
    def _current(self, generation: int) -> TrainingRun | None:
        run = self.run
        return run if run is not None and run.generation == generation and not self._closed else None

    def _on_progress(self, generation: int, event: Progress) -> None:
        if (run := self._current(generation)) is not None:
            self.progress.emit(run, event)

    def _on_metrics(self, generation: int, event: Metrics) -> None:
        if (run := self._current(generation)) is not None:
            self.metrics.emit(run, event)

    def _on_checkpoint(self, generation: int, event: CheckpointSaved) -> None:
        if (run := self._current(generation)) is not None:
            self.checkpoint_saved.emit(run, event)

    def _on_skipped(self, generation: int, event: StepSkipped) -> None:
        if (run := self._current(generation)) is not None:
            self.step_skipped.emit(run, event)

    def _on_done(self, generation: int, finished: Finished) -> None:
        if (run := self._current(generation)) is not None:
            run.state = ("paused" if run.pausing else "cancelled") if finished.cancelled else "done"
            self.finished.emit(run, finished)

    def _on_failed(self, generation: int, message: str) -> None:
        if (run := self._current(generation)) is not None:
            run.state = "failed"
            self.failed.emit(run, message)
