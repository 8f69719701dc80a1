"""StreamingModule: a trunk that runs tile by tile and behaves exactly like the trunk.

Forward: the output map is cut into disjoint blocks; each block's input cone runs through the
trunk without autograd and is written into the stitched map. Backward: the map's gradient is
split over the same blocks; each block's cone is recomputed with autograd and back-propagates
its own part of the gradient. Back-propagation is linear in the output gradient, so the sum over
blocks of every parameter gradient and of the input gradient is the conventional gradient, up to
floating-point summation order. Memory is one cone's activations plus the stitched map.

When what follows the trunk reduces the map (a global pool), the map need not be held at all:
:meth:`StreamingModule.forward_blocks` hands each block to ``on_block`` and keeps nothing, and
:meth:`StreamingModule.backward_from` takes the map's gradient block by block from a callable
(see :mod:`engine.streaming.pooled`). Memory is then one cone's activations, whatever the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from engine.errors import Cancelled, TileSizeError
from engine.streaming.executor import _crop, run_block
from engine.streaming.graph import FROZEN_MODULES, StreamGraph, trace_trunk
from engine.streaming.heap import release_free_heap
from engine.streaming.plan import AxisGeometry, AxisPlan, Block, axis_blocks, axis_geometry, plan_axis
from engine.streaming.sink import InputGradientSink
from engine.streaming.sources import RegionSource, TensorSource

ProgressFn = Callable[[str, int, int], None]  # (phase "forward"/"backward", blocks done, total)
#: The output map's gradient for cells [rows) x [cols) of the output plane, or None where it is 0;
#: with a true ``needs_values`` attribute it is also given the block's recomputed ``values=``.
BlockGradFn = Callable[..., "torch.Tensor | None"]


@dataclass(frozen=True)
class TilePlan:
    """All blocks for one input size: per-axis blocks and plans, and the output size."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    rows: tuple[Block, ...]
    cols: tuple[Block, ...]
    row_plans: tuple[AxisPlan, ...]
    col_plans: tuple[AxisPlan, ...]

    @property
    def n_blocks(self) -> int:
        return len(self.rows) * len(self.cols)


class _StreamFunction(torch.autograd.Function):
    """Autograd node: forward streams without a graph, backward recomputes cone by cone."""

    @staticmethod
    def forward(ctx, module: "StreamingModule", source, sink, x_anchor, *params):
        ctx.module, ctx.source, ctx.sink = module, source, sink
        ctx.autocast = _autocast_state(module.compute_device(source))
        return module._forward_blocks(source)

    @staticmethod
    def backward(ctx, grad_out):
        return (None, None, None, *_streamed_backward(ctx, grad_out, x_index=3))


def _streamed_backward(ctx, grad_out, x_index: int) -> tuple:
    """The backward pass of both autograd nodes: blocks recomputed in the forward's autocast
    state. ``x_index``: where the input anchor sits among the node's inputs (the parameters
    follow it). Returns the anchor's gradient (None when it goes to a sink) and the parameters'."""
    module: StreamingModule = ctx.module
    need_x = ctx.needs_input_grad[x_index] or ctx.sink is not None
    need_params = ctx.needs_input_grad[x_index + 1:]
    with torch.enable_grad(), _autocast_context(ctx.autocast):
        grad_x, grad_params = module._backward_blocks(ctx.source, grad_out, need_x, need_params, ctx.sink)
    if ctx.sink is not None or not ctx.needs_input_grad[x_index]:
        grad_x = None
    return (grad_x, *grad_params)


class _PooledStreamFunction(torch.autograd.Function):
    """Autograd node for :meth:`StreamingModule.pooled`: the map is reduced block by block in
    forward and its gradient made block by block in backward; neither is ever whole."""

    @staticmethod
    def forward(ctx, module: "StreamingModule", source, sink, pool: str, x_anchor, *params):
        from engine.streaming.pooled import GlobalPoolReducer

        reducer = GlobalPoolReducer(pool)
        module._forward_blocks(source, keep_output=False, reducer=reducer)
        ctx.module, ctx.source, ctx.sink, ctx.reducer = module, source, sink, reducer
        ctx.autocast = _autocast_state(module.compute_device(source))
        return reducer.pooled().to(reducer.dtype)

    @staticmethod
    def backward(ctx, grad_pooled):
        return (None, None, None, None, *_streamed_backward(ctx, ctx.reducer.grad_for_block(grad_pooled), x_index=4))


def _autocast_state(device: torch.device):
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return kind, torch.get_autocast_dtype(kind)
    return None


class _autocast_context:
    """Re-enter the forward's autocast state in backward, so recomputed cones match the forward."""

    def __init__(self, state):
        self._ctx = torch.autocast(state[0], dtype=state[1]) if state else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


class StreamingModule(nn.Module):
    """Wrap ``trunk`` so it runs tile by tile with results identical to ``trunk(x)``.

    Args:
        trunk: the local early layers of a CNN (convolutions, pools, pointwise layers, residual
            blocks). Non-local layers are refused with :class:`~engine.errors.NotStreamableError`.
        tile_size: the largest input window (pixels, int or (rows, cols)) one block may read.
            Blocks of output cells are sized so their interior cone fits; must be at least the
            trunk's receptive field. Larger tiles recompute less overlap.
        memory_budget: alternatively, bytes one tile may use in training; the largest tile that
            fits is chosen (see :meth:`estimate_tile_bytes`).
        freeze_batchnorm: put BatchNorm and Dropout layers in eval mode and keep them there
            (BatchNorm then uses its running statistics, which is local).
        channels_last: feed tiles in channels-last (NHWC) memory format. Default on: faster
            convolutions with cuDNN on GPUs and with oneDNN on CPUs (bench/streaming.py, stream
            vs stream-nchw, 2 CPU cores, torch 2.13, float32, 4096²: ResNet-34 to layer2
            inference 1.29x, training 1.03x; smallnet 1.95x and 1.63x). The output map is
            returned in the usual (NCHW) layout either way.
        progress: optional ``fn(phase, done, total)`` called after each block.
        should_stop: optional callable checked before each block; when it returns True the
            pass stops by raising :class:`~engine.errors.Cancelled`.
        on_block: optional ``fn(rows, cols, values)`` called after each forward block with the
            block's owned output cells (``rows``/``cols`` are output-plane intervals), e.g. to
            show a map growing while the pass runs.
    """

    def __init__(self, trunk: nn.Module, tile_size: int | Sequence[int] | None = None, *,
                 memory_budget: int | None = None, freeze_batchnorm: bool = False,
                 channels_last: bool = True, progress: ProgressFn | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_block: Callable[[tuple[int, int], tuple[int, int], torch.Tensor], None] | None = None):
        super().__init__()
        self.trunk = trunk
        self.freeze_batchnorm = freeze_batchnorm
        self.graph: StreamGraph = trace_trunk(trunk, freeze_batchnorm=freeze_batchnorm)
        self.geometry: tuple[AxisGeometry, AxisGeometry] = (axis_geometry(self.graph, 0), axis_geometry(self.graph, 1))
        self.channels_last = channels_last
        self.progress = progress
        self.should_stop = should_stop
        self.on_block = on_block
        #: Return freed heap pages to the OS every ``release_every`` blocks (CPU, glibc; 0: never):
        #: keeps peak memory flat over many blocks (see engine.streaming.heap).
        self.release_every = 0
        self._blocks_since_release = 0
        #: Output-plane (row, col) to start the forward pass from: blocks nearest to it run first
        #: (e.g. what is on screen). Forward blocks are independent, so any order is exact; the
        #: backward pass keeps raster order, which the input-gradient sink relies on.
        self.forward_priority: tuple[float, float] | None = None
        if tile_size is None and memory_budget is None:
            raise TileSizeError("give tile_size (input pixels per tile) or memory_budget (bytes per tile)")
        if tile_size is None:
            tile_size = self.tile_for_budget(memory_budget)
        tile = (int(tile_size), int(tile_size)) if isinstance(tile_size, (int, float)) else tuple(int(t) for t in tile_size)
        self.tile_size: tuple[int, int] = tile
        self.block_cells = (self.geometry[0].block_for_tile(tile[0]), self.geometry[1].block_for_tile(tile[1]))
        self._plans: dict[tuple[int, int], TilePlan] = {}

    # ----------------------------------------------------------------------------- geometry
    @property
    def receptive_field(self) -> tuple[int, int]:
        return self.geometry[0].receptive_field, self.geometry[1].receptive_field

    @property
    def stride(self) -> tuple[int, int]:
        return self.geometry[0].stride, self.geometry[1].stride

    def output_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """Output map size (rows, cols) for an input of ``in_hw`` pixels."""
        return self.graph.spatial_sizes(tuple(in_hw))[-1]

    def tile_plan(self, in_hw: tuple[int, int]) -> TilePlan:
        """Blocks and cones for an input of ``in_hw`` pixels (cached per size)."""
        in_hw = (int(in_hw[0]), int(in_hw[1]))
        plan = self._plans.get(in_hw)
        if plan is None:
            sizes = self.graph.spatial_sizes(in_hw)
            out_hw = sizes[-1]
            rows = tuple(axis_blocks(out_hw[0], self.block_cells[0]))
            cols = tuple(axis_blocks(out_hw[1], self.block_cells[1]))
            lens_h = [s[0] for s in sizes]
            lens_w = [s[1] for s in sizes]
            row_plans = tuple(plan_axis(self.graph, lens_h, 0, (b.start, b.end)) for b in rows)
            col_plans = tuple(plan_axis(self.graph, lens_w, 1, (b.start, b.end)) for b in cols)
            plan = TilePlan(in_hw, out_hw, rows, cols, row_plans, col_plans)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[in_hw] = plan
        return plan

    # ----------------------------------------------------------------------------- memory
    def activation_elements_per_pixel(self) -> float:
        """Sum over the trunk's layers of activation elements per input pixel, per image.

        Measured once on a small probe cone (a few output cells), scaled by each layer's
        stride; used to size tiles from a memory budget.
        """
        if not hasattr(self, "_act_per_px"):
            probe = tuple(g.cone_len(4) for g in self.geometry)
            p = next(iter(self.trunk.parameters()), None)
            c_in = self._probe_channels()
            x = torch.zeros(1, c_in, *probe, dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else "cpu")
            total = 0.0
            sizes = self.graph.spatial_sizes(probe)
            rp = plan_axis(self.graph, [s[0] for s in sizes], 0, (0, sizes[-1][0]))
            cp = plan_axis(self.graph, [s[1] for s in sizes], 1, (0, sizes[-1][1]))
            with torch.no_grad():
                for node_out in self._all_node_outputs(x, rp, cp):
                    total += node_out.numel()
            self._act_per_px = total / (probe[0] * probe[1])
        return self._act_per_px

    def _probe_channels(self) -> int:
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                return m.in_channels
        return 3

    def _all_node_outputs(self, x, rp: AxisPlan, cp: AxisPlan):
        # Runs the graph keeping every output, to count activation sizes.
        values = {0: x}
        for i in range(1, len(self.graph.nodes)):
            node = self.graph.nodes[i]
            if rp.regions[i] is None:
                continue
            if node.kind == "window":
                s = node.inputs[0]
                th, tw = rp.tiles[i], cp.tiles[i]
                values[i] = node.run(_crop(values[s], rp.regions[s], cp.regions[s], (th.crop.start, th.crop.end),
                                           (tw.crop.start, tw.crop.end)), th, tw)
            else:
                values[i] = node.run({s: _crop(values[s], rp.regions[s], cp.regions[s], rp.regions[i], cp.regions[i])
                                      for s in node.inputs})
        return list(values.values())

    def estimate_tile_bytes(self, tile: int, *, batch: int = 1, element_bytes: int = 4, training: bool = True) -> int:
        """Rough bytes one tile of ``tile`` x ``tile`` input pixels needs.

        Training keeps every activation of the cone for backward plus their gradients
        (about 2x); inference holds a few layers at a time (counted as 1x, a safe overestimate).
        """
        factor = 2.0 if training else 1.0
        return int(factor * self.activation_elements_per_pixel() * tile * tile * batch * element_bytes)

    def tile_for_budget(self, budget: int, **kw) -> int:
        """Largest tile (multiple of the stride, at least the receptive field) within ``budget`` bytes."""
        rf = max(g.receptive_field for g in self.geometry)
        stride = max(g.stride for g in self.geometry)
        if self.estimate_tile_bytes(rf, **kw) > budget:
            raise TileSizeError(
                f"a memory budget of {budget / 2**20:.0f} MiB is too small for even the smallest tile "
                f"({rf} px, about {self.estimate_tile_bytes(rf, **kw) / 2**20:.0f} MiB). Raise the budget.")
        per_px = self.estimate_tile_bytes(1, **kw) or 1
        tile = int(math.sqrt(budget / per_px))
        tile = max(rf, tile - (tile - rf) % stride)
        return tile

    # ----------------------------------------------------------------------------- running
    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_batchnorm:
            # Frozen means frozen: a training loop's model.train() must not bring back batch statistics.
            for m in self.trunk.modules():
                if isinstance(m, FROZEN_MODULES):
                    m.eval()
        return self

    def compute_device(self, source=None) -> torch.device:
        p = next(iter(self.trunk.parameters()), None)
        if p is not None:
            return p.device
        if isinstance(source, TensorSource):
            return source.tensor.device
        return torch.device("cpu")

    def forward(self, x: torch.Tensor | RegionSource, *, input_grad_sink: InputGradientSink | None = None) -> torch.Tensor:
        """Return ``trunk(x)`` computed tile by tile.

        ``x`` is an NCHW tensor or a :class:`~engine.streaming.sources.RegionSource` read lazily.
        With ``input_grad_sink``, the input gradient is delivered to the sink region by region
        during backward (and not stored in ``x.grad``); this also works for lazy sources.
        """
        source, anchor, params, grad_wanted = self._prepare(x, input_grad_sink)
        if not grad_wanted:
            return self._forward_blocks(source)
        return _StreamFunction.apply(self, source, input_grad_sink, anchor, *params)

    def _prepare(self, x, input_grad_sink):
        """The source to read, the tensor autograd differentiates the input through, the trunk's
        parameters, and whether any gradient is wanted."""
        source = self._source(x)
        params = [p for p in self.trunk.parameters()]
        if input_grad_sink is not None:
            # The gradient goes to the sink, not to a tensor: a dummy leaf makes autograd call backward.
            anchor = torch.zeros(0, requires_grad=True)
        elif isinstance(source, TensorSource):
            anchor = source.tensor
        else:
            anchor = torch.zeros(0)
        grad_wanted = torch.is_grad_enabled() and (anchor.requires_grad or any(p.requires_grad for p in params))
        return source, anchor, params, grad_wanted

    def _source(self, x) -> RegionSource:
        """``x`` as a region source (a tensor wrapped without copying), after checking that the
        trunk's layers are still in the modes streaming needs."""
        self.graph.check_modes()
        source = TensorSource(x) if isinstance(x, torch.Tensor) else x
        if not isinstance(source, RegionSource):
            raise TypeError(f"StreamingModule takes an NCHW tensor or a RegionSource, got {type(x).__name__}")
        return source

    def _read(self, source, rows, cols) -> torch.Tensor:
        x = source.read(rows, cols)
        device = self.compute_device(source)
        if x.device != device:
            x = x.to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _release(self) -> None:
        """Between blocks, the block's activations freed: every ``release_every`` blocks give
        their pages back (see :mod:`engine.streaming.heap`), on CPU, where the heap holds them."""
        if not self.release_every or self.compute_device().type != "cpu":
            return
        self._blocks_since_release += 1
        if self._blocks_since_release >= self.release_every:
            self._blocks_since_release = 0
            release_free_heap()

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("streaming pass cancelled")

    def pooled(self, x: torch.Tensor | RegionSource, pool: str, *,
               input_grad_sink: InputGradientSink | None = None) -> torch.Tensor:
        """``trunk(x)`` globally max- or mean-pooled (``pool`` "max" or "avg"): (N, C), with
        autograd, equal to pooling :meth:`forward`'s map, but the map is reduced block by block
        and never held, nor its gradient (see :mod:`engine.streaming.pooled`)."""
        source, anchor, params, grad_wanted = self._prepare(x, input_grad_sink)
        if not grad_wanted:
            from engine.streaming.pooled import GlobalPoolReducer

            reducer = GlobalPoolReducer(pool)
            self._forward_blocks(source, keep_output=False, reducer=reducer)
            return reducer.pooled().to(reducer.dtype)
        return _PooledStreamFunction.apply(self, source, input_grad_sink, pool, anchor, *params)

    def forward_blocks(self, x: torch.Tensor | RegionSource) -> None:
        """Run the forward pass for ``on_block`` only, without autograd and keeping no output
        map: each block's owned cells go to ``on_block`` and are then dropped."""
        self._forward_blocks(self._source(x), keep_output=False)

    def backward_from(self, x: torch.Tensor | RegionSource, grad_for_block: BlockGradFn, *,
                      input_grad_sink: InputGradientSink | None = None, params: bool = False):
        """The streamed backward pass with the output map's gradient given block by block:
        ``grad_for_block(rows, cols)`` returns the gradient of cells ``[rows) x [cols)`` (output
        plane; shape (N, C, rows, cols)), or None where it is zero. The input gradient goes to
        ``input_grad_sink`` region by region; with ``params``, returns the trunk's parameter
        gradients (a list, None for unused), else None. Nothing of the size of the map is held."""
        source = self._source(x)
        need_params = [params and p.requires_grad for p in self.trunk.parameters()]
        with torch.enable_grad():  # the blocks are recomputed with autograd whatever the caller's mode
            _, grads = self._backward_blocks(source, grad_for_block, input_grad_sink is not None, need_params,
                                             input_grad_sink)
        return grads if params else None

    def _forward_blocks(self, source, keep_output: bool = True, reducer=None) -> torch.Tensor | None:
        n, _, h, w = source.shape
        plan = self.tile_plan((h, w))
        out: torch.Tensor | None = None
        done = 0
        order = [(i, j) for i in range(len(plan.rows)) for j in range(len(plan.cols))]
        if self.forward_priority is not None:
            pr, pc = self.forward_priority

            def distance(ij):
                rb, cb = plan.rows[ij[0]], plan.cols[ij[1]]
                return ((rb.start + rb.end) / 2 - pr) ** 2 + ((cb.start + cb.end) / 2 - pc) ** 2

            order.sort(key=distance)
        with torch.no_grad():
            for i, j in order:
                rb, rp, cb, cp = plan.rows[i], plan.row_plans[i], plan.cols[j], plan.col_plans[j]
                self._check_stop()
                y = run_block(self.graph, self._read(source, rp.cone, cp.cone), rp, cp)
                if out is None and keep_output:
                    out = y.new_empty((y.shape[0], y.shape[1], *plan.out_hw))
                r0, c0 = rb.own_start - rb.start, cb.own_start - cb.start
                if keep_output:
                    out[:, :, rb.own_start:rb.end, cb.own_start:cb.end] = y[:, :, r0:, c0:]
                if reducer is not None:
                    reducer.add((rb.own_start, rb.end), (cb.own_start, cb.end), y[:, :, r0:, c0:])
                if self.on_block is not None:
                    self.on_block((rb.own_start, rb.end), (cb.own_start, cb.end), y[:, :, r0:, c0:])
                del y
                self._release()
                done += 1
                if self.progress:
                    self.progress("forward", done, plan.n_blocks)
        return out

    def _backward_blocks(self, source, grad_out: torch.Tensor | BlockGradFn, need_x: bool,
                         need_params: Sequence[bool], sink: InputGradientSink | None):
        n, c, h, w = source.shape
        plan = self.tile_plan((h, w))
        params = list(self.trunk.parameters())
        wanted = [p for p, need in zip(params, need_params) if need]
        grads: list[torch.Tensor | None] = [None] * len(wanted)
        device = self.compute_device(source)
        grad_x = None
        if need_x and sink is None:
            if isinstance(source, TensorSource):
                # In the input's own layout: autograd would copy a gradient whose strides differ
                # from an (e.g. channels-last) input's into its layout, a second input-sized buffer.
                grad_x = torch.zeros_like(source.tensor, device=device, memory_format=torch.preserve_format)
            else:
                grad_x = torch.zeros(source.shape, dtype=source.dtype, device=device)
        if sink is not None:
            sink.begin(source.shape, [rp.cone for rp in plan.row_plans], [cp.cone for cp in plan.col_plans], device,
                       source.dtype)
        done = 0
        # A block gradient that depends on the block's values (ties of a global max too many to
        # store) gets them from the recomputation, so that runs before the gradient is known.
        needs_values = callable(grad_out) and getattr(grad_out, "needs_values", False)
        for bi, (rb, rp) in enumerate(zip(plan.rows, plan.row_plans)):
            for bj, (cb, cp) in enumerate(zip(plan.cols, plan.col_plans)):
                self._check_stop()
                x = y = None
                if needs_values:
                    x, y = self._recompute(source, rp, cp, need_x)
                g = self._block_grad(grad_out, rb, cb, y)
                gx_block = None
                if g is not None:
                    if y is None:
                        x, y = self._recompute(source, rp, cp, need_x)
                    targets = ([x] if need_x else []) + wanted
                    g = g.to(y.dtype)
                    if self.channels_last and y.dim() == 4:
                        g = g.contiguous(memory_format=torch.channels_last)  # as the block's output: no reorder in backward
                    result = torch.autograd.grad(y, targets, g, allow_unused=True)
                    if need_x:
                        gx_block, result = result[0], result[1:]
                    for k, gk in enumerate(result):
                        if gk is not None:
                            grads[k] = gk if grads[k] is None else grads[k].add_(gk)
                    if grad_x is not None and gx_block is not None:
                        grad_x[:, :, rp.cone[0]:rp.cone[1], cp.cone[0]:cp.cone[1]] += gx_block.to(grad_x.dtype)
                    result = None
                if sink is not None:
                    sink.add(bi, bj, gx_block)
                if y is not None:
                    x = y = gx_block = g = None
                    self._release()
                done += 1
                if self.progress:
                    self.progress("backward", done, plan.n_blocks)
        it = iter(grads)
        grad_params = [next(it) if need else None for need in need_params]
        return grad_x, grad_params

    def _recompute(self, source, rp: AxisPlan, cp: AxisPlan, need_x: bool):
        """A block's cone read again and run with autograd: (input, output)."""
        x = self._read(source, rp.cone, cp.cone).detach()
        if need_x:
            x.requires_grad_(True)
        return x, run_block(self.graph, x, rp, cp)

    @staticmethod
    def _block_grad(grad_out: torch.Tensor | BlockGradFn, rb: Block, cb: Block,
                    values: torch.Tensor | None = None) -> torch.Tensor | None:
        """This block's share of the output gradient: its owned cells, zero where an earlier
        block owns them. None when that share is all zero (e.g. a max-pool head's gradient
        reaches a few cells only), which contributes nothing and is skipped. ``values``: the
        block's recomputed output, for a callable that ``needs_values``."""
        if callable(grad_out):
            rows, cols = (rb.start, rb.end), (cb.start, cb.end)
            g = grad_out(rows, cols, values=values) if values is not None else grad_out(rows, cols)
            if g is None:
                return None
        else:
            g = grad_out[:, :, rb.start:rb.end, cb.start:cb.end]
        if rb.own_start != rb.start or cb.own_start != cb.start:
            g = g.clone()
            g[:, :, :rb.own_start - rb.start] = 0
            g[:, :, :, :cb.own_start - cb.start] = 0
        if not bool(g.any()):
            return None
        return g
