"""One worker thread for engine jobs, and the relay of their events to the UI thread.

Inference and training each own one :class:`EngineWorker` (``viewer.workers.inference`` and
``viewer.workers.training`` adapt it): at most one job of a kind on the device, the others
waiting in the executor's queue. A job's events are looked up in its table of
:class:`Relay` (event type -> UI-thread handler, and an optional worker-side preparation such
as colour-mapping a map patch) and handed to the UI thread through a
:class:`~viewer.workers.inbox.UiInbox` (bounded, drained in short turns), not one queued signal
per event, which starved paints for seconds with fast jobs. The job's end comes back the same
way: its ``Finished``, or a message saying what went wrong.

``engine.api`` (and with it torch) is imported by the runners on the worker, never by the UI.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from PySide6.QtCore import QObject

from engine.errors import Cancelled, StreamSlideError
from engine.events import CancelToken, EventCallback, Finished
from viewer.workers.gc_pauses import import_engine
from viewer.workers.inbox import UiInbox
from viewer.workers.priority import lower_thread_priority

log = logging.getLogger(__name__)

#: The UI thread spends at most this long per turn of the event loop on a worker's events.
DRAIN_BUDGET_S = 0.008

#: A UI-thread handler: ``handler(job key, payload)``.
Handler = Callable[[int, Any], None]


@dataclass(frozen=True)
class Relay:
    """How one event type reaches the UI: ``handler(key, prepare(event))`` (``prepare`` runs
    on the worker; without it the event itself is the payload)."""

    handler: Handler
    prepare: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class EngineJob:
    """One job for the worker. ``run(on_event, token)`` blocks and returns the ``Finished``; its
    events go through ``relays`` (types not listed are dropped: ``Finished`` is also the return
    value, which is what ends the job). ``on_done(key, Finished)`` or ``on_failed(key, message)``
    runs at the end; ``on_started(key, None)`` first, when given. With ``skip_if_cancelled``, a
    job cancelled while it waited never runs and ends as a cancelled ``Finished``."""

    key: int
    token: CancelToken
    run: Callable[[EventCallback, CancelToken], Finished]
    relays: Mapping[type, Relay]
    on_done: Handler
    on_failed: Handler
    name: str  # for the log: "inference job 3"
    doing: str  # for the message: "running the model"
    on_started: Handler | None = None
    skip_if_cancelled: bool = False


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


class EngineWorker(QObject):
    """A one-thread executor for engine jobs whose events reach UI-thread handlers.

    ``capacity`` bounds the events waiting for the UI thread: a worker that gets ahead waits
    (checking its job's token). ``closed`` is True from :meth:`shutdown` on; handlers check it.
    """

    def __init__(self, thread_name: str, capacity: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name, initializer=lower_thread_priority)
        self._inbox = UiInbox(capacity, DRAIN_BUDGET_S, parent=self)
        self.closed = False

    def warm_up(self) -> None:
        """Import the engine on the worker now, ahead of the first job (see
        :func:`viewer.workers.gc_pauses.import_engine`); a job submitted meanwhile waits behind it."""
        if not self.closed:
            self._pool.submit(import_engine)

    def submit(self, job: EngineJob) -> None:
        if self.closed:
            raise RuntimeError("the engine worker is shut down")
        self._pool.submit(self._work, job)

    def shutdown(self) -> None:
        """Wait for the worker (cancel the jobs' tokens first); only at shutdown."""
        self.closed = True
        self._inbox.close()  # a worker waiting for room sees the cancel
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- worker ------------------------------------------------------------------------------
    def _work(self, job: EngineJob) -> None:
        post = self._inbox.post
        if job.skip_if_cancelled and job.token.cancelled:  # cancelled while queued: never touch the device
            post(job.on_done, job.key, Finished(cancelled=True))
            return
        if job.on_started is not None:
            post(job.on_started, job.key, None)

        def on_event(event: object) -> None:
            relay = job.relays.get(type(event))
            if relay is not None:
                post(relay.handler, job.key, event if relay.prepare is None else relay.prepare(event), job.token)

        outcome = run_to_outcome(lambda: job.run(on_event, job.token), log, job.name, job.doing)
        if isinstance(outcome, str):
            post(job.on_failed, job.key, outcome)
        else:
            post(job.on_done, job.key, outcome)
