"""Cohort evaluations as jobs of the viewer's engine worker (the inference one: one model job on
the device at a time, an evaluation queued behind the maps being computed, and they behind it).

:meth:`EvaluationJobs.start` runs ``engine.api.evaluate`` as one job with a cancel token (the
engine checks it between slides and, inside a slide, between tiles). Its progress and warnings
come back through the worker's inbox; at the end the runner reads the folder back
(``engine.api.read_evaluation``) on the worker, so the UI thread only shows what it gets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engine.events import CancelToken, Event, Finished, JobWarning, Progress
from engine.specs import EvaluationSpec
from viewer.workers.engine_worker import EngineJob, EngineWorker, Relay
from viewer.workers.gc_pauses import import_engine


@dataclass(frozen=True)
class EvaluationOutcome:
    """What an evaluation job ends with: the engine's ``Finished`` and its folder read back
    (``engine.evaluate.results.EvaluationFiles``)."""

    finished: Finished
    files: object


#: ``evaluate``'s shape, ending with the folder read back: blocking, honours the token.
EvaluationRunner = Callable[[EvaluationSpec, Callable[[Event], None], CancelToken], EvaluationOutcome]


def engine_evaluation_runner(spec: EvaluationSpec, on_event: Callable[[Event], None],
                             cancel: CancelToken) -> EvaluationOutcome:
    """The real runner (on the worker: ``engine.api.evaluate`` imports torch)."""
    import_engine()
    from engine.api import evaluate, read_evaluation

    result = evaluate(spec, on_event, cancel)
    return EvaluationOutcome(Finished(result.cancelled, result.outputs), read_evaluation(spec.out_dir))


@dataclass
class EvaluationJob:
    key: int
    spec: EvaluationSpec
    token: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"  # queued, running, done


class EvaluationJobs(QObject):
    """Start and cancel evaluations on ``worker``; signals fire on the UI thread."""

    started = Signal(object)  # EvaluationJob
    progress = Signal(object, object)  # EvaluationJob, Progress (phase "evaluate": slides)
    warning = Signal(object, object)  # EvaluationJob, JobWarning (a slide failed and was skipped)
    finished = Signal(object, object)  # EvaluationJob, EvaluationOutcome (files None when cancelled before it ran)
    failed = Signal(object, str)

    def __init__(self, worker: EngineWorker, runner: EvaluationRunner = engine_evaluation_runner,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker, self._runner = worker, runner
        self._keys = itertools.count(1_000_000)  # apart from the inference jobs' keys in the log
        self.job: EvaluationJob | None = None
        self._relays = {Progress: Relay(self._on_progress), JobWarning: Relay(self._on_warning)}

    @property
    def active(self) -> bool:
        return self.job is not None and self.job.state != "done"

    def start(self, spec: EvaluationSpec) -> EvaluationJob:
        if self.active:
            raise RuntimeError("an evaluation is already queued or running; cancel it first")
        job = self.job = EvaluationJob(next(self._keys), spec)
        self._worker.submit(EngineJob(
            job.key, job.token, lambda on_event, token: self._runner(job.spec, on_event, token), self._relays,
            on_done=self._on_done, on_failed=self._on_failed, name=f"evaluation {job.key}",
            doing="evaluating the cohort", on_started=self._on_started, skip_if_cancelled=True))
        return job

    def cancel(self) -> None:
        if self.active:
            self.job.token.cancel()

    def _current(self, key: int) -> EvaluationJob | None:
        job = self.job
        return job if job is not None and job.key == key and not self._worker.closed else None

    def _on_started(self, key: int, _payload) -> None:
        if (job := self._current(key)) is not None:
            job.state = "running"
            self.started.emit(job)

    def _on_progress(self, key: int, progress: Progress) -> None:
        if (job := self._current(key)) is not None:
            self.progress.emit(job, progress)

    def _on_warning(self, key: int, warning: JobWarning) -> None:
        if (job := self._current(key)) is not None:
            self.warning.emit(job, warning)

    def _on_done(self, key: int, outcome) -> None:
        if (job := self._current(key)) is not None:
            job.state = "done"
            if isinstance(outcome, Finished):  # cancelled while queued, or a Cancelled raised
                outcome = EvaluationOutcome(outcome, None)
            self.finished.emit(job, outcome)

    def _on_failed(self, key: int, message: str) -> None:
        if (job := self._current(key)) is not None:
            job.state = "done"
            self.failed.emit(job, message)
