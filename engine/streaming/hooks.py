"""What one streaming pass reports and obeys: progress, cancellation, live blocks, block order,
heap release.

A :class:`~engine.streaming.StreamingModule` holds what stays fixed (the trunk and its tiles);
these hooks come with each call, so one module serves runs with different callbacks and no
run leaves its callbacks behind on the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

ProgressFn = Callable[[str, int, int], None]  # (phase "forward"/"backward", blocks done, total)
#: ``fn(rows, cols, values)``: a forward block's owned output cells (output-plane intervals).
BlockFn = Callable[[tuple[int, int], tuple[int, int], torch.Tensor], None]
#: ``fn(rows, cols) -> bool``: whether to leave out the forward block owning these output cells.
SkipFn = Callable[[tuple[int, int], tuple[int, int]], bool]


@dataclass(frozen=True)
class StreamHooks:
    """Per-call hooks of a streaming pass.

    ``progress(phase, done, total)`` is called after each block; ``should_stop()`` before each,
    and when it returns True the pass raises :class:`~engine.errors.Cancelled`. ``on_block``
    receives each forward block's owned output cells (e.g. to show a map growing).
    ``priority``: an output-plane (row, col) the forward pass starts from, nearest blocks first
    (forward blocks are independent, so any order is exact; the backward pass keeps raster
    order, which the input-gradient sink relies on). ``release_every``: give freed heap pages
    back to the OS every that many blocks, forward and backward counted together (CPU, glibc;
    0: never): keeps peak memory flat over many blocks (see :mod:`engine.streaming.heap`).
    ``skip_block(rows, cols)``: True leaves a forward block (its owned output cells, output-plane
    intervals) uncomputed, forward and backward: it is not read, run, pooled or sent to
    ``on_block`` (a stitched map holds NaN there), its gradient is taken to be 0 (the
    input-gradient sink gets None for it) and a graph budget keeps no graph for it. Exact when
    what follows the trunk does not read those cells (a masked head: :func:`engine.streaming.pooled.mask_skip`).
    ``graph_budget``: this call's bytes for kept forward graphs (None: the module's
    ``graph_budget``; 0: keep none); ``on_plan(plan)`` receives a training call's
    :class:`~engine.streaming.keep.GraphPlan` before its forward pass.
    """

    progress: ProgressFn | None = None
    should_stop: Callable[[], bool] | None = None
    on_block: BlockFn | None = None
    priority: tuple[float, float] | None = None
    release_every: int = 0
    skip_block: SkipFn | None = None
    graph_budget: int | None = None
    on_plan: Callable[[object], None] | None = None
