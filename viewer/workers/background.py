"""One-off background jobs (open a slide, make a thumbnail, export a view) off the UI thread.

Results come back through a queued signal to :meth:`BackgroundRunner._deliver`, which runs on
the UI thread and calls the bound method the caller gave. Expected failures (slide errors,
OS errors) arrive as a message; anything else is logged with its traceback and reported too,
so nothing disappears inside a future.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal, Slot

from engine.errors import StreamSlideError
from viewer.workers.priority import lower_thread_priority

log = logging.getLogger(__name__)

THREAD_PREFIX = "streamslide-jobs"


class BackgroundRunner(QObject):
    """Runs callables on a small thread pool and hands results to the UI thread."""

    _finished = Signal(int, object)
    _failed = Signal(int, str)

    def __init__(self, workers: int = 1, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_PREFIX, initializer=lower_thread_priority)
        self._ids = itertools.count(1)
        self._callbacks: dict[int, tuple[Callable[[Any], None], Callable[[str], None] | None]] = {}
        self._closed = False
        self._finished.connect(self._deliver)
        self._failed.connect(self._deliver_failure)

    @property
    def pending(self) -> int:
        return len(self._callbacks)

    def submit(self, fn: Callable[..., Any], *args: Any, on_done: Callable[[Any], None], on_error: Callable[[str], None] | None = None) -> int:
        """Run ``fn(*args)`` on a worker; ``on_done(result)`` / ``on_error(message)`` run on the UI thread."""
        if self._closed:
            raise RuntimeError("BackgroundRunner is shut down")
        job_id = next(self._ids)
        self._callbacks[job_id] = (on_done, on_error)
        self._pool.submit(self._run, job_id, fn, args)
        return job_id

    def cancel(self, job_id: int) -> None:
        """Forget a job's callbacks: its result, when it comes, is dropped."""
        self._callbacks.pop(job_id, None)

    def _run(self, job_id: int, fn: Callable[..., Any], args: tuple) -> None:
        try:
            result = fn(*args)
        except (StreamSlideError, OSError) as exc:
            self._failed.emit(job_id, str(exc))
        except Exception as exc:  # an unexpected bug: keep its traceback, and tell the user
            log.exception("background job %s failed", getattr(fn, "__name__", fn))
            self._failed.emit(job_id, f"internal error in {getattr(fn, '__name__', 'a job')}: {exc!r}")
        else:
            self._finished.emit(job_id, result)

    @Slot(int, object)
    def _deliver(self, job_id: int, result: Any) -> None:
        callbacks = self._callbacks.pop(job_id, None)
        if callbacks is not None and not self._closed:
            callbacks[0](result)

    @Slot(int, str)
    def _deliver_failure(self, job_id: int, message: str) -> None:
        callbacks = self._callbacks.pop(job_id, None)
        if callbacks is not None and callbacks[1] is not None and not self._closed:
            callbacks[1](message)

    def shutdown(self) -> None:
        """Drop queued jobs, wait for running ones (call only at shutdown)."""
        self._closed = True
        self._callbacks.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
