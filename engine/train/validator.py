"""The validation pass after each epoch, and which result counts as the best so far."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from engine.errors import Cancelled
from engine.events import CancelToken, Event, Progress
from engine.io.labels import SlideRecord
from engine.specs import TrainingSpec
from engine.train import distributed
from engine.train.data import Prefetcher
from engine.train.distributed import DistContext
from engine.train.feed import SlideFeed
from engine.train.step import SlideForward
from engine.train.tasks import Task


def improves(monitor: str, value: float, best: float | None) -> bool:
    """Whether validation ``value`` of ``monitor`` beats ``best`` (None: nothing yet)."""
    if not math.isfinite(value):
        return False
    sign = -1.0 if monitor in TrainingSpec.MONITORS_LOWER_IS_BETTER else 1.0
    return best is None or sign * (value - best) > 0


class Validator:
    """The task's metrics (loss, and AUC or correlations, ...) over the validation slides, each
    rank scoring its share; the loss is unweighted."""

    def __init__(self, records: Sequence[SlideRecord], feed: SlideFeed, forward: SlideForward, task: Task,
                 ctx: DistContext, emit: Callable[[Event], None], cancel: CancelToken, prefetch: int):
        self.records, self.feed, self.forward, self.task, self.ctx = list(records), feed, forward, task, ctx
        self.emit, self.cancel, self.prefetch = emit, cancel, prefetch

    def __call__(self, classifier: torch.nn.Module) -> dict[str, float] | None:
        """The metrics, or None without validation slides. A single process may be cancelled
        here (:class:`~engine.errors.Cancelled`); ranks only stop between steps."""
        if not self.records:
            return None
        jobs = self.jobs()
        rows = []
        classifier.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), Prefetcher(jobs, depth=self.prefetch) as slides:
            for k, (rgb, aug, label, mask) in enumerate(slides):
                if self.cancel.cancelled and not self.ctx.active:
                    raise Cancelled("validation cancelled")
                logits = self.forward(classifier, rgb, aug, mask)
                loss = self.task.loss(logits, label, weighted=False)
                rows.append((self.task.outputs(logits), label, float(loss)))
                elapsed = time.perf_counter() - t0
                self.emit(Progress("val", k + 1, len(jobs), elapsed, elapsed / (k + 1) * (len(jobs) - k - 1)))
        classifier.train()
        rows = distributed.gather_lists(rows, self.ctx)
        return self.task.metrics(np.array([r[0] for r in rows]), [r[1] for r in rows],
                                 np.array([r[2] for r in rows]))

    def jobs(self) -> list:
        """Loading jobs for this rank's share of the validation slides, in order (for a Prefetcher)."""
        return [lambda rec=rec: self.feed.load(rec, None) for rec in self.records[self.ctx.rank::self.ctx.world_size]]
