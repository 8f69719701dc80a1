"""The cyclic garbage collector runs on the UI thread only, and still collects."""

from __future__ import annotations

import gc
import threading
import weakref

from viewer.workers.gc_pauses import collect_on_ui_thread


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


def test_importing_the_engine_freezes_torch_and_the_lazy_imports_of_a_run(tmp_path):
    """In a fresh process: after ``import_engine`` the modules a training run would import
    lazily (torch._dynamo, through torch.optim) are loaded, and their objects are frozen, so
    the UI thread's collections never walk them."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import gc, sys\n"
            "from viewer.workers.gc_pauses import import_engine, engine_imported\n"
            "assert not engine_imported()\n"
            "import_engine(); import_engine()\n"
            "assert engine_imported()\n"
            "assert 'torch._dynamo' in sys.modules and 'engine.train.loop' in sys.modules\n"
            "assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
            "assert len(gc.get_objects()) < 20_000, len(gc.get_objects())\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2], timeout=120)


def test_the_collector_skips_its_ticks_while_the_engine_is_imported(qtbot, monkeypatch):
    from viewer.workers import gc_pauses

    collector = collect_on_ui_thread()
    for _ in range(2000):
        Node()
    monkeypatch.setattr(gc_pauses, "_importing", threading.Event())
    gc_pauses._importing.set()
    before = list(collector.collections)
    collector.tick()
    assert collector.collections == before
    gc_pauses._importing.clear()
    collector.tick()
    assert sum(collector.collections) > sum(before)
