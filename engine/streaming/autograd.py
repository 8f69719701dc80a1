"""The autograd nodes of a streamed trunk: forward without a graph, backward cone by cone.

Each node keeps the module, the source, the input-gradient sink and the pass (its hooks and
heap-release count) from the forward, and re-enters the forward's autocast state in backward,
so the recomputed cones match what the forward computed (the loops are :mod:`engine.streaming.passes`). ``module`` is the
:class:`~engine.streaming.StreamingModule` (not imported here: it imports this module).
"""

from __future__ import annotations

import torch

from engine.streaming.passes import run_backward, run_forward
from engine.streaming.pooled import GlobalPoolReducer


class StreamFunction(torch.autograd.Function):
    """``trunk(x)`` as one node: the stitched map in forward, the streamed backward in backward."""

    @staticmethod
    def forward(ctx, module, source, sink, run, x_anchor, *params):
        _keep(ctx, module, source, sink, run)
        return run_forward(module, source, run)

    @staticmethod
    def backward(ctx, grad_out):
        return (None, None, None, None, *_streamed_backward(ctx, grad_out, x_index=4))


class PooledStreamFunction(torch.autograd.Function):
    """``trunk(x)`` globally pooled as one node: the map is reduced block by block in forward and
    its gradient made block by block in backward; neither is ever whole. ``pool`` is "max" or
    "avg", or a fresh :class:`GlobalPoolReducer` (e.g. one with a mask)."""

    @staticmethod
    def forward(ctx, module, source, sink, run, pool, x_anchor, *params):
        reducer = pool if isinstance(pool, GlobalPoolReducer) else GlobalPoolReducer(pool)
        run_forward(module, source, run, keep_output=False, reducer=reducer)
        _keep(ctx, module, source, sink, run)
        ctx.reducer = reducer
        return reducer.pooled().to(reducer.dtype)

    @staticmethod
    def backward(ctx, grad_pooled):
        return (None, None, None, None, None,
                *_streamed_backward(ctx, ctx.reducer.grad_for_block(grad_pooled), x_index=5))


def _keep(ctx, module, source, sink, run) -> None:
    ctx.module, ctx.source, ctx.sink, ctx.run = module, source, sink, run
    ctx.autocast = _autocast_state(module.compute_device(source))


def _streamed_backward(ctx, grad_out, x_index: int) -> tuple:
    """The backward pass of both nodes: blocks recomputed in the forward's autocast state.
    ``x_index``: where the input anchor sits among the node's inputs (the parameters follow it).
    Returns the anchor's gradient (None when it goes to a sink) and the parameters'."""
    module = ctx.module
    need_x = ctx.needs_input_grad[x_index] or ctx.sink is not None
    need_params = ctx.needs_input_grad[x_index + 1:]
    with torch.enable_grad(), _AutocastContext(ctx.autocast):
        grad_x, grad_params = run_backward(module, ctx.source, ctx.run, grad_out, need_x, need_params, ctx.sink)
    if ctx.sink is not None or not ctx.needs_input_grad[x_index]:
        grad_x = None
    return (grad_x, *grad_params)


def _autocast_state(device: torch.device):
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return kind, torch.get_autocast_dtype(kind)
    return None


class _AutocastContext:
    """Re-enter the forward's autocast state (None: autocast off) in backward."""

    def __init__(self, state):
        self._ctx = torch.autocast(state[0], dtype=state[1]) if state else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
