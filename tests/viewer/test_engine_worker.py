"""viewer.workers.engine_worker: one worker, events relayed by type to UI-thread handlers, the
end of a job as a Finished or a message, cancelled-while-queued jobs skipped. No widgets."""

from __future__ import annotations

import logging
import threading

import pytest

from engine.errors import CheckpointError
from engine.events import CancelToken, Finished, Metrics, Progress
from viewer.workers.engine_worker import EngineJob, EngineWorker, Relay


class Recorder:
    """UI-thread handlers that record what reached them, on which thread."""

    def __init__(self) -> None:
        self.calls: list = []

    def handler(self, kind: str):
        def handle(key, payload):
            self.calls.append((kind, key, payload, threading.current_thread() is threading.main_thread()))
        return handle

    def kinds(self, key=None):
        return [c[0] for c in self.calls if key is None or c[1] == key]


@pytest.fixture
def worker(qtbot):
    worker = EngineWorker("streamslide-test", capacity=4)
    yield worker
    worker.shutdown()


def job(key, run, rec, token=None, **kw):
    return EngineJob(key, token or CancelToken(), run, kw.pop("relays", {Progress: Relay(rec.handler("progress"))}),
                     on_done=rec.handler("done"), on_failed=rec.handler("failed"), name=f"job {key}", doing="testing", **kw)


def test_events_reach_their_handlers_on_the_ui_thread_prepared_on_the_worker(qtbot, worker):
    rec, prepared_on = Recorder(), []

    def prepare(event):
        prepared_on.append(threading.current_thread().name)
        return event.done * 10

    def run(on_event, token):
        for i in range(20):  # more than the inbox holds: the worker waits for the UI thread
            on_event(Progress("forward", i, 20, 0.0, None))
        on_event(Metrics("train", 0, 0, {}))  # no relay for it: dropped
        return Finished(cancelled=False, outputs={"x": "y"})

    worker.submit(job(7, run, rec, relays={Progress: Relay(rec.handler("progress"), prepare)}, on_started=rec.handler("started")))
    qtbot.waitUntil(lambda: "done" in rec.kinds(), timeout=10_000)
    assert rec.kinds() == ["started"] + ["progress"] * 20 + ["done"]
    assert [c[2] for c in rec.calls if c[0] == "progress"] == [10 * i for i in range(20)]
    assert all(c[1] == 7 and c[3] for c in rec.calls)  # the job's key, on the UI thread
    assert set(prepared_on) == {"streamslide-test_0"} and rec.calls[-1][2].outputs == {"x": "y"}


def test_one_job_at_a_time_in_submission_order(qtbot, worker):
    rec, gate, order = Recorder(), threading.Event(), []

    def first(on_event, token):
        order.append("first starts")
        gate.wait(10)
        order.append("first ends")
        return Finished(cancelled=False)

    def second(on_event, token):
        order.append("second starts")
        return Finished(cancelled=False)

    worker.submit(job(1, first, rec))
    worker.submit(job(2, second, rec))
    qtbot.waitUntil(lambda: order == ["first starts"], timeout=5_000)
    gate.set()
    qtbot.waitUntil(lambda: rec.kinds() == ["done", "done"], timeout=5_000)
    assert order == ["first starts", "first ends", "second starts"] and [c[1] for c in rec.calls] == [1, 2]


def test_a_job_cancelled_while_it_waited_never_runs(qtbot, worker):
    rec, ran = Recorder(), []
    token = CancelToken()
    token.cancel()
    worker.submit(job(3, lambda on_event, t: ran.append(1), rec, token=token, on_started=rec.handler("started"),
                      skip_if_cancelled=True))
    qtbot.waitUntil(lambda: bool(rec.calls), timeout=5_000)
    assert not ran and rec.kinds() == ["done"] and rec.calls[0][2].cancelled


def test_failures_come_back_as_messages(qtbot, worker, caplog):
    rec = Recorder()

    def engine_error(on_event, token):
        raise CheckpointError("model.json: not a StreamSlide model")

    def bug(on_event, token):
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR):
        worker.submit(job(1, engine_error, rec))
        worker.submit(job(2, bug, rec))
        qtbot.waitUntil(lambda: len(rec.calls) == 2, timeout=5_000)
    assert rec.calls[0][:3] == ("failed", 1, "model.json: not a StreamSlide model")
    assert rec.calls[1][0] == "failed" and rec.calls[1][2] == "internal error while testing: KeyError('oops')"
    assert "job 2 failed" in caplog.text  # a bug keeps its traceback in the log


def test_a_shut_down_worker_takes_no_job(qtbot):
    worker = EngineWorker("streamslide-test", capacity=4)
    worker.shutdown()
    assert worker.closed
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(job(1, lambda on_event, token: Finished(cancelled=False), Recorder()))
