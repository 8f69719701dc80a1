"""Keep Python's cyclic garbage collector off worker threads and out of the UI's way.

Two hazards, both measured here:

* Deadlock. A collection runs on whichever thread happens to allocate when a threshold trips.
  When a worker's collection frees a cycle holding Qt wrappers (a closed window's widgets),
  Shiboken destroys those QObjects on the worker: ``~QObject`` takes Qt's signal-slot mutex
  there and then waits for the GIL, while the UI thread, holding the GIL, waits for that mutex
  (seen with py-spy in about 1 run of 3 of the live-overlay stall test). So automatic
  collection is switched off and :class:`UiThreadCollector` collects on the UI thread only, from
  a timer, following CPython's own per-generation thresholds.
* Pauses. A full (generation-2) collection walks every tracked object while holding the GIL.
  After torch is imported there are about 250,000 of them and one full pass took 71 ms. Objects
  alive after start-up live as long as the process, so :func:`freeze_long_lived` moves them to
  the permanent generation, which collections skip; full passes are also spaced out.
"""

from __future__ import annotations

import gc
import threading
import time

from PySide6.QtCore import QCoreApplication, QObject, QTimer


def freeze_long_lived() -> None:
    """Exempt every object alive now from future collections (cheap: one list splice)."""
    gc.freeze()


_engine_lock = threading.Lock()
_engine_imported = False
_importing = threading.Event()  # the collector skips its ticks meanwhile: everything is frozen after


def engine_imported() -> bool:
    """True once :func:`import_engine` has finished (benchmarks start their probes after it)."""
    return _engine_imported


def import_engine() -> None:
    """On a worker: import the engine's torch-backed modules, then freeze what they made.

    ``engine.api`` imports torch lazily, inside ``run_inference``/``run_training``, so freezing
    after importing it alone froze nothing: the first job's ~140,000 module objects then went
    through gen-1 collections on the UI thread (60-70 ms pauses, measured). Importing torch also
    holds the GIL for stretches of ~200 ms, so the viewer calls this ahead of the first job
    (see :meth:`viewer.workers.engine_worker.EngineWorker.warm_up`), when a model is loaded or
    training is opened. Idempotent.
    """
    global _engine_imported
    with _engine_lock:
        if _engine_imported:
            return
        _importing.set()
        try:
            _import_engine_modules()
            freeze_long_lived()
        finally:
            _importing.clear()
        _engine_imported = True


def _import_engine_modules() -> None:
    """What ``engine.api``'s jobs import lazily, imported now (on a worker) so that
    :func:`freeze_long_lived` freezes their objects (``engine.api.warm_up`` runs nothing)."""
    from engine.api import warm_up

    warm_up()


class UiThreadCollector(QObject):
    """Runs the cyclic collector on the thread that owns it (the UI thread), on a timer.

    Generation 0 and 1 passes are short (new objects only) and run whenever CPython would have
    run them; a full pass runs at most every ``full_every_s`` seconds. Reference counting,
    which frees almost everything, is unaffected: only cycles wait for the next tick.
    """

    def __init__(self, interval_ms: int = 100, full_every_s: float = 20.0, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()
        self.collections = [0, 0, 0]  # passes run per generation, for tests and benchmarks
        self._timer = QTimer(self, interval=interval_ms)
        self._timer.timeout.connect(self.tick)
        gc.disable()
        self._timer.start()

    def tick(self) -> None:
        if _importing.is_set():  # walking the import's objects now is wasted: they get frozen
            return
        count0, count1, count2 = gc.get_count()
        t0, t1, t2 = gc.get_threshold()
        if count2 > t2 and time.monotonic() - self._last_full > self.full_every_s:
            self._collect(2)
            self._last_full = time.monotonic()
        elif count1 > t1:
            self._collect(1)
        elif count0 > t0:
            self._collect(0)

    def _collect(self, generation: int) -> None:
        gc.collect(generation)
        self.collections[generation] += 1


def collect_on_ui_thread() -> UiThreadCollector:
    """Install the application's collector once (idempotent); call on the UI thread after the
    QApplication exists. Returns it."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("collect_on_ui_thread() needs a QApplication")
    collector = getattr(app, "_streamslide_collector", None)
    if collector is None:
        collector = UiThreadCollector(parent=app)
        app._streamslide_collector = collector
    return collector
