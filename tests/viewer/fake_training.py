"""A stand-in for ``engine.api.run_training`` with its signature and events, without torch."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.events import Finished, Metrics, Progress


class FakeTrainRunner:
    """``run_training``'s shape without torch: a step every few ms until cancelled or released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.specs = []

    def __call__(self, spec, on_event, cancel):
        self.specs.append(spec)
        step = 0
        while not cancel.cancelled and not self.release.is_set():
            on_event(Metrics("train", 0, step, {"loss": 1.0 / (step + 1), "lr": spec.lr}))
            on_event(Progress("train", step % 10 + 1, 10, 0.01 * (step + 1), 0.1))
            step += 1
            self.release.wait(0.005)
        done = Finished(cancelled=cancel.cancelled, outputs={"last": str(Path(spec.out_dir) / "last")})
        on_event(done)
        return done


