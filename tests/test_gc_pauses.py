"""The cyclic garbage collector runs on the UI thread only, and still collects."""

from __future__ import annotations

import gc
import threading
import weakref

from viewer.gc_pauses import collect_on_ui_thread


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_automatic_collection_is_off_and_the_ui_timer_collects_cycles(qtbot):
    collect_on_ui_thread()
    assert not gc.isenabled()
    for _ in range(2000):  # enough new objects to pass the generation-0 threshold
        Node()
    node = Node()
    alive = weakref.ref(node)
    del node
    qtbot.waitUntil(lambda: alive() is None, timeout=5_000)


def test_no_collection_runs_on_a_worker_that_allocates_cycles(qtbot):
    collect_on_ui_thread()
    threads: list[str] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            threads.append(threading.current_thread().name)

    gc.callbacks.append(record)
    try:
        def churn() -> None:  # far past every threshold: CPython would collect here many times
            for _ in range(200_000):
                Node()

        worker = threading.Thread(target=churn, name="churn")
        worker.start()
        qtbot.waitUntil(lambda: not worker.is_alive(), timeout=60_000)
        qtbot.waitUntil(lambda: len(threads) > 0, timeout=5_000)
    finally:
        gc.callbacks.remove(record)
    assert "churn" not in threads and set(threads) == {threading.main_thread().name}
