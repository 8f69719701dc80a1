"""The block loops of one streamed call, and what the call carries between them.

:func:`run_forward` runs the blocks without autograd, writing each block's owned cells into the
stitched map and handing them to a reducer and the ``on_block`` hook; the blocks the graph plan
keeps run with autograd instead, last, so their graphs live shortest. :func:`run_backward` runs
the blocks again in raster order: each block's cone comes from the kept graph or is recomputed
(:meth:`StreamingModule.recompute`) and back-propagates its share of the map's gradient. The sum
of those shares is the conventional gradient (see :mod:`engine.streaming.module`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from engine.errors import Cancelled, EmptyMaskError
from engine.streaming.executor import BlockGradFn, block_grad, run_block
from engine.streaming.heap import release_free_heap
from engine.streaming.hooks import StreamHooks
from engine.streaming.plan import TilePlan
from engine.streaming.pooled import GlobalPoolReducer
from engine.streaming.sink import InputGradientSink
from engine.streaming.sources import RegionSource, TensorSource

# ``module`` below is the StreamingModule that calls these loops (not imported: it imports this
# module); they only read its graph, layout and plans, and call its cone reads.


class StreamPass:
    """One call's hooks, and the blocks run since the heap was last released (a forward and the
    backward of the same call count together)."""

    def __init__(self, hooks: StreamHooks, device: torch.device):
        self.hooks = hooks
        self._release = bool(hooks.release_every) and device.type == "cpu"  # the CPU heap holds the pages
        self._since_release = 0
        # Graph budget: the blocks whose forward graph is kept for backward, and those graphs.
        self.keep: frozenset[tuple[int, int]] = frozenset()
        self.keep_x = False
        self.tile_plan: TilePlan | None = None  # the graph plan's blocks, when it chose others than the module's
        self.kept: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def check_stop(self) -> None:
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            raise Cancelled("streaming pass cancelled")

    def block_freed(self) -> None:
        """A block's activations were freed: every ``release_every`` blocks give their pages back."""
        if not self._release:
            return
        self._since_release += 1
        if self._since_release >= self.hooks.release_every:
            self._since_release = 0
            release_free_heap()

    def block_done(self, phase: str, done: int, total: int) -> None:
        if self.hooks.progress is not None:
            self.hooks.progress(phase, done, total)


def run_forward(module, source: RegionSource, run: StreamPass, keep_output: bool = True,
                reducer: GlobalPoolReducer | None = None) -> torch.Tensor | None:
    """One forward pass over the blocks, without autograd: the stitched map (``keep_output``),
    each block's owned cells to ``reducer`` and to the ``on_block`` hook."""
    plan = run.tile_plan or module.tile_plan(source.shape[2:])
    out: torch.Tensor | None = None
    on_block, skip = run.hooks.on_block, run.hooks.skip_block
    order = plan.block_order(run.hooks.priority)
    if run.keep:  # kept blocks last, backward's first at the very end: their graphs live shortest
        order = [b for b in order if b not in run.keep] + [b for b in plan.block_order()[::-1] if b in run.keep]
    with torch.no_grad():
        for done, (i, j) in enumerate(order, start=1):
            rb, rp, cb, cp = plan.rows[i], plan.row_plans[i], plan.cols[j], plan.col_plans[j]
            run.check_stop()
            rows, cols = (rb.own_start, rb.end), (cb.own_start, cb.end)
            if skip is not None and skip(rows, cols):
                run.block_done("forward", done, plan.n_blocks)
                continue
            if (i, j) in run.keep:
                with torch.enable_grad():  # kept for backward, which then needs no recomputation
                    run.kept[(i, j)] = module.recompute(source, rp, cp, run.keep_x)
                y = run.kept[(i, j)][1].detach()
            else:
                y = run_block(module.graph, module.read_cone(source, rp.cone, cp.cone), rp, cp)
            if out is None and keep_output:
                shape = (y.shape[0], y.shape[1], *plan.out_hw)
                out = y.new_empty(shape) if skip is None else y.new_full(shape, float("nan"))
            owned = y[:, :, rb.own_start - rb.start:, cb.own_start - cb.start:]
            if keep_output:
                out[:, :, rows[0]:rows[1], cols[0]:cols[1]] = owned
            if reducer is not None:
                reducer.add(rows, cols, owned)
            if on_block is not None:
                on_block(rows, cols, owned)
            del y, owned
            run.block_freed()
            run.block_done("forward", done, plan.n_blocks)
    if keep_output and out is None:
        raise EmptyMaskError(f"every block of the {plan.out_hw[0]}x{plan.out_hw[1]} output map was skipped "
                             "(skip_block: the mask holds no cell of it), so there is no map to give the head; "
                             "run without the mask, or with one that holds a cell of the map")
    return out

def run_backward(module, source: RegionSource, run: StreamPass,
                 grad_out: torch.Tensor | BlockGradFn, need_x: bool, need_params: Sequence[bool],
                 sink: InputGradientSink | None):
    """One backward pass over the blocks in raster order, each cone recomputed with autograd:
    (the input gradient, or None when it goes to ``sink`` or is not needed; the parameters'
    gradients where ``need_params``)."""
    plan = run.tile_plan or module.tile_plan(source.shape[2:])
    wanted = [p for p, need in zip(module.trunk.parameters(), need_params, strict=True) if need]
    grads: list[torch.Tensor | None] = [None] * len(wanted)
    device = module.compute_device(source)
    grad_x = None
    # The whole input as one block: the cone's gradient is the input's (no second buffer).
    whole = (plan.n_blocks == 1 and isinstance(source, TensorSource) and sink is None and need_x
             and (plan.row_plans[0].cone, plan.col_plans[0].cone) == ((0, source.shape[2]), (0, source.shape[3])))
    if need_x and sink is None and not whole:
        if isinstance(source, TensorSource):
            # In the input's own layout: autograd would copy a gradient whose strides differ
            # from an (e.g. channels-last) input's into its layout, a second input-sized buffer.
            grad_x = torch.zeros_like(source.tensor, device=device, memory_format=torch.preserve_format)
        else:
            grad_x = torch.zeros(source.shape, dtype=source.dtype, device=device)
    if sink is not None:
        sink.begin(source.shape, [rp.cone for rp in plan.row_plans], [cp.cone for cp in plan.col_plans], device,
                   source.dtype)
    # A block gradient that depends on the block's values (ties of a global max too many to
    # store) gets them from the recomputation, so that runs before the gradient is known.
    needs_values = callable(grad_out) and getattr(grad_out, "needs_values", False)
    skip = run.hooks.skip_block
    for done, (bi, bj) in enumerate(plan.block_order(), start=1):
        rb, rp, cb, cp = plan.rows[bi], plan.row_plans[bi], plan.cols[bj], plan.col_plans[bj]
        run.check_stop()
        if skip is not None and skip((rb.own_start, rb.end), (cb.own_start, cb.end)):
            # Left out in forward too: its cells are outside what the head reads, so its
            # gradient must be 0 (checked when it is a tensor; a callable's is not asked for,
            # that would cost its work); the sink still hears of it, to emit what is final.
            if isinstance(grad_out, torch.Tensor):
                _check_skipped_grad(grad_out, rb, cb)
            if sink is not None:
                sink.add(bi, bj, None)
            run.kept.pop((bi, bj), None)
            run.block_done("backward", done, plan.n_blocks)
            continue
        x = y = None
        if needs_values:
            x, y = _block_graph(module, source, run, (bi, bj), need_x)
        g = block_grad(grad_out, rb, cb, y)
        gx_block = None
        if g is not None:
            if y is None:
                x, y = _block_graph(module, source, run, (bi, bj), need_x)
            gx_block = _backward_block(module, x, y, g, need_x, wanted, grads)
            if whole and gx_block is not None:
                grad_x = _in_layout_of(gx_block, source.tensor)
            elif grad_x is not None and gx_block is not None:
                grad_x[:, :, rp.cone[0]:rp.cone[1], cp.cone[0]:cp.cone[1]] += gx_block.to(grad_x.dtype)
        if sink is not None:
            sink.add(bi, bj, gx_block)
        run.kept.pop((bi, bj), None)  # a kept block without gradient frees its graph too
        if y is not None:
            x = y = gx_block = g = None
            run.block_freed()
        run.block_done("backward", done, plan.n_blocks)
    run.kept.clear()
    if whole and grad_x is None:
        grad_x = torch.zeros_like(source.tensor, device=device, memory_format=torch.preserve_format)
    it = iter(grads)
    return grad_x, [next(it) if need else None for need in need_params]

def _block_graph(module, source, run: StreamPass, ij: tuple[int, int], need_x: bool):
    """A block's (input, output) with autograd: kept from the forward pass, else recomputed."""
    kept = run.kept.pop(ij, None)
    if kept is not None and (kept[0].requires_grad or not need_x):
        return kept
    i, j = ij
    plan = run.tile_plan or module.tile_plan(source.shape[2:])
    return module.recompute(source, plan.row_plans[i], plan.col_plans[j], need_x)

def _backward_block(module, x, y, g, need_x: bool, wanted: list, grads: list) -> torch.Tensor | None:
    """Back-propagate the block's output gradient ``g``: parameter gradients added into
    ``grads``; returns the cone's input gradient (None unless ``need_x``)."""
    g = g.to(y.dtype)
    if module.channels_last and y.dim() == 4:
        g = g.contiguous(memory_format=torch.channels_last)  # as the block's output: no reorder in backward
    result = torch.autograd.grad(y, ([x] if need_x else []) + wanted, g, allow_unused=True)
    gx_block = None
    if need_x:
        gx_block, result = result[0], result[1:]
    for k, gk in enumerate(result):
        if gk is not None:
            grads[k] = gk if grads[k] is None else grads[k].add_(gk)
    return gx_block


def _in_layout_of(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``g`` as the gradient of ``like``: itself when dtype and strides match (autograd would copy
    a gradient whose strides differ into the input's layout), else a copy in that layout."""
    if g.dtype == like.dtype and g.stride() == like.stride():
        return g
    return torch.empty_like(like, device=g.device, memory_format=torch.preserve_format).copy_(g)


def _check_skipped_grad(grad_out: torch.Tensor, rb, cb) -> None:
    """Refuse to drop a skipped block's gradient unless its owned cells' share is all zero."""
    owned = grad_out[:, :, rb.own_start:rb.end, cb.own_start:cb.end]
    if bool(owned.any()):
        raise ValueError(f"the output gradient is not zero on output cells rows {rb.own_start}..{rb.end - 1}, "
                         f"cols {cb.own_start}..{cb.end - 1}, whose block skip_block leaves out: the backward "
                         "would drop it. Skip only blocks outside what the loss reads (the same mask forward "
                         "and backward, cells outside it set with torch.where, not multiplied)")
