"""Worker threads yield the CPU to the UI thread."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

#: Niceness added to worker threads: on a 2-core machine two decoders and the UI thread
#: compete for CPU, and a paint must not wait for a JPEG decode.
WORKER_NICENESS = 10


def lower_thread_priority() -> None:
    """Pool initializer: make the calling worker thread yield CPU to the UI thread (Linux
    schedules threads individually; elsewhere this is a no-op)."""
    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except OSError as exc:  # e.g. a sandbox forbids it: run at normal priority
            log.warning("could not lower worker thread priority: %s", exc)
