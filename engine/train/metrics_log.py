"""The run's metrics: each Metrics event is emitted and (rank 0) appended to ``metrics.jsonl``."""

from __future__ import annotations

from typing import Callable

from engine.events import Event, Metrics
from engine.io.runs import RunFolder
from engine.train.distributed import DistContext


class MetricsLogger:
    def __init__(self, run: RunFolder, ctx: DistContext, emit: Callable[[Event], None]):
        self.run, self.ctx, self.emit = run, ctx, emit

    def log(self, m: Metrics) -> None:
        self.emit(m)
        if self.ctx.is_main:
            self.run.append_metrics(m.phase, m.epoch, m.step, m.values)

    def resumed_at(self, epoch: int, global_step: int) -> None:
        """Forget rows logged after the checkpoint a run resumes from: it logs them again."""
        if self.ctx.is_main:
            self.run.drop_metrics_after(epoch, global_step)
