"""Training runs on one :class:`~viewer.workers.engine_worker.EngineWorker`, one at a time.

The UI thread freezes a :class:`~engine.specs.TrainingSpec` and :meth:`TrainingJobs.start` runs
it on a dedicated worker thread with a cancel token and a generation number. Events come back
through the worker's inbox, drained in short turns, so even a run that reports thousands of
steps a second never starves timers and paints. Events of an older generation (a run the user
already stopped and replaced) are dropped.

Pause and resume: the engine has no pause. A pause is a cancel (the engine saves ``last/`` at
the next step) remembered as "paused"; resume starts the same spec again with ``resume=True``,
which the engine continues exactly (same data order, optimiser and RNG state).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engine.events import CancelToken, CheckpointSaved, Event, Finished, Metrics, Progress, StepSkipped
from engine.specs import TrainingSpec
from viewer.workers.engine_worker import EngineJob, EngineWorker, Relay
from viewer.workers.gc_pauses import import_engine

THREAD_PREFIX = "streamslide-training"
#: Events waiting for the UI thread before the worker pauses (it checks its token meanwhile).
MAX_INBOX = 256

#: ``run_training``'s shape: blocking, events through the callback, honours the token.
TrainRunner = Callable[[TrainingSpec, Callable[[Event], None], CancelToken], Finished]


def engine_train_runner(spec: TrainingSpec, on_event: Callable[[Event], None], cancel: CancelToken) -> Finished:
    """The real runner. Imported here, on the worker: ``engine.api`` loads torch lazily."""
    import_engine()  # first, so torch's module objects are frozen (see viewer.workers.gc_pauses)
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


class TrainingJobs(QObject):
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
        self._worker = EngineWorker(THREAD_PREFIX, MAX_INBOX, parent=self)
        self._generations = itertools.count(1)
        self.run: TrainingRun | None = None  # the latest run, finished or not
        self._relays = {Progress: Relay(self._on_progress), Metrics: Relay(self._on_metrics),
                        CheckpointSaved: Relay(self._on_checkpoint), StepSkipped: Relay(self._on_skipped)}

    # -- UI thread API ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """A run is on the worker (running or stopping)."""
        return self.run is not None and self.run.state in ("running", "stopping")

    @property
    def paused(self) -> bool:
        return self.run is not None and self.run.state == "paused"

    def warm_up(self) -> None:
        """Import the engine on the worker now, ahead of Start."""
        if not self.active:
            self._worker.warm_up()

    def start(self, spec: TrainingSpec) -> TrainingRun:
        if self._worker.closed:
            raise RuntimeError("TrainingJobs is shut down")
        if self.active:
            raise RuntimeError("a training run is already active; cancel or pause it first")
        run = TrainingRun(next(self._generations), spec)
        self.run = run
        self._worker.submit(EngineJob(
            run.generation, run.token, lambda on_event, token: self._runner(run.spec, on_event, token), self._relays,
            on_done=self._on_done, on_failed=self._on_failed, name=f"training run {run.generation}", doing="training"))
        self.started.emit(run)
        return run

    def pause(self) -> None:
        """Save ``last/`` at the next step and stop; :meth:`resume` continues exactly from there."""
        self._stop(pausing=True)

    def resume(self) -> TrainingRun | None:
        """Start the paused (or cancelled) run again from its ``last/`` checkpoint."""
        if self.run is None or self.active or self.run.state not in ("paused", "cancelled"):
            return None
        return self.start(dataclasses.replace(self.run.spec, resume=True))

    def cancel(self) -> None:
        """Stop the run; the engine saves ``last/`` at its next step (or tile)."""
        self._stop(pausing=False)

    def _stop(self, pausing: bool) -> None:
        if self.active:
            self.run.pausing = pausing
            self.run.state = "stopping"
            self.run.token.cancel()

    def shutdown(self) -> None:
        """Cancel (the engine saves ``last/``) and wait for the worker; only at shutdown."""
        if self.run is not None:
            self.run.token.cancel()
        self._worker.shutdown()

    # -- back on the UI thread ----------------------------------------------------------------
    def _current(self, generation: int) -> TrainingRun | None:
        run = self.run
        return run if run is not None and run.generation == generation and not self._worker.closed else None

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
