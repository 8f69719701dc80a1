"""StreamingModule: a trunk that runs tile by tile and behaves exactly like the trunk.

Forward: the output map is cut into disjoint blocks; each block's input cone runs through the
trunk without autograd and is written into the stitched map. Backward: the map's gradient is
split over the same blocks; each block's cone is recomputed with autograd and back-propagates
its own part of the gradient. Back-propagation is linear in the output gradient, so the sum over
blocks of every parameter gradient and of the input gradient is the conventional gradient, up to
floating-point summation order. Memory is one cone's activations plus the stitched map.

When what follows the trunk reduces the map (a global pool), the map need not be held at all:
:meth:`StreamingModule.forward_blocks` hands each block to the ``on_block`` hook and keeps
nothing, and :meth:`StreamingModule.backward_from` takes the map's gradient block by block from a
callable (see :mod:`engine.streaming.pooled`). Memory is then one cone's activations, whatever
the image.

Planning (which cone each block reads) is :mod:`engine.streaming.plan`, tile sizes from a memory
budget :mod:`engine.streaming.budget`, which graphs to keep :mod:`engine.streaming.keep`, the
autograd nodes :mod:`engine.streaming.autograd`, the loops over the blocks
:mod:`engine.streaming.passes`; this module is the trunk's face: geometry, plans, the calls, and
reading and recomputing one block's cone. Per-call hooks (progress, cancellation, ...) are
:class:`~engine.streaming.hooks.StreamHooks`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from engine.errors import TileSizeError
from engine.streaming import budget
from engine.streaming.autograd import PooledStreamFunction, StreamFunction
from engine.streaming.executor import BlockGradFn, run_block
from engine.streaming.graph import FROZEN_MODULES, StreamGraph, trace_trunk
from engine.streaming.hooks import StreamHooks
from engine.streaming.keep import CPU_WHOLE_IMAGE_MAX_PIXELS, GraphPlan, plan_graphs, saved_profile
from engine.streaming.passes import StreamPass, run_backward, run_forward
from engine.streaming.plan import (
    AxisGeometry,
    AxisPlan,
    TilePlan,
    axis_geometry,
    plan_tiles,
)
from engine.streaming.pooled import GlobalPoolReducer
from engine.streaming.sink import InputGradientSink
from engine.streaming.sources import RegionSource, TensorSource


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
        graph_budget: bytes a training pass may spend on autograd graphs besides the stitched
            map: the first blocks of the backward pass keep their forward graph while it fits
            and only the others are recomputed (see :mod:`engine.streaming.keep`; exact either
            way). None (default): every block is recomputed. ``StreamHooks.graph_budget``
            overrides it per call; :meth:`plan_summary` shows the plan.

    Every call takes ``hooks=`` (:class:`~engine.streaming.hooks.StreamHooks`) for that run.
    """

    def __init__(self, trunk: nn.Module, tile_size: int | Sequence[int] | None = None, *,
                 memory_budget: int | None = None, freeze_batchnorm: bool = False, channels_last: bool = True,
                 graph_budget: int | None = None):
        super().__init__()
        self.graph_budget = graph_budget
        self.trunk = trunk
        self.freeze_batchnorm = freeze_batchnorm
        self.graph: StreamGraph = trace_trunk(trunk, freeze_batchnorm=freeze_batchnorm)
        self.geometry: tuple[AxisGeometry, AxisGeometry] = (axis_geometry(self.graph, 0), axis_geometry(self.graph, 1))
        self.channels_last = channels_last
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
            plan = plan_tiles(self.graph, self.block_cells, in_hw)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[in_hw] = plan
        return plan

    # ----------------------------------------------------------------------------- memory
    def activation_elements_per_pixel(self) -> float:
        """Sum over the trunk's layers of activation elements per input pixel, per image (measured
        once; see :func:`engine.streaming.budget.activation_elements_per_pixel`)."""
        if not hasattr(self, "_act_per_px"):
            self._act_per_px = budget.activation_elements_per_pixel(self.graph, self.trunk, self.geometry)
        return self._act_per_px

    def estimate_tile_bytes(self, tile: int, *, batch: int = 1, element_bytes: int = 4, training: bool = True) -> int:
        """Rough bytes one tile of ``tile`` x ``tile`` input pixels needs (see :func:`engine.streaming.budget.tile_bytes`)."""
        return budget.tile_bytes(self.activation_elements_per_pixel(), tile, batch=batch,
                                 element_bytes=element_bytes, training=training)

    def tile_for_budget(self, memory_budget: int, **kw) -> int:
        """Largest tile (multiple of the stride, at least the receptive field) within ``memory_budget`` bytes."""
        return budget.tile_for_budget(self.activation_elements_per_pixel(), self.geometry, memory_budget, **kw)

    def graph_plan(self, in_hw: tuple[int, int], *, batch: int = 1, element_bytes: int | None = None,
                   graph_budget: int | None = None, skip=None) -> GraphPlan:
        """Which blocks a training pass over ``in_hw`` input pixels keeps the graph of, within
        ``graph_budget`` bytes (None: the module's); ``element_bytes`` defaults to the parameters'.
        ``skip``: the pass's ``skip_block`` (blocks left out cost nothing and are never kept)."""
        if not hasattr(self, "_saved_profile"):
            self._saved_profile = saved_profile(self.graph, self.trunk, self.geometry, budget._input_channels(self.trunk))
        if element_bytes is None:
            p = next(iter(self.trunk.parameters()), None)
            element_bytes = p.element_size() if p is not None else 4
        whole_ok = self.compute_device().type != "cpu" or in_hw[0] * in_hw[1] <= CPU_WHOLE_IMAGE_MAX_PIXELS
        return plan_graphs(self.graph, self.tile_plan(in_hw), self.tile_size, profile=self._saved_profile,
                           batch=batch, element_bytes=element_bytes,
                           budget=self.graph_budget if graph_budget is None else graph_budget, skip=skip,
                           whole_image=whole_ok)

    def plan_summary(self, in_hw: tuple[int, int], **kw) -> dict:
        """:meth:`graph_plan` as JSON values: tile, blocks, kept, recomputed, bytes."""
        return self.graph_plan(in_hw, **kw).summary()

    # ----------------------------------------------------------------------------- calls
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

    def forward(self, x: torch.Tensor | RegionSource, *, input_grad_sink: InputGradientSink | None = None,
                hooks: StreamHooks | None = None) -> torch.Tensor:
        """Return ``trunk(x)`` computed tile by tile.

        ``x`` is an NCHW tensor or a :class:`~engine.streaming.sources.RegionSource` read lazily.
        With ``input_grad_sink``, the input gradient is delivered to the sink region by region
        during backward (and not stored in ``x.grad``); this also works for lazy sources.
        ``hooks`` serve the forward pass and the backward pass of this call.
        """
        source, anchor, params, grad_wanted = self._prepare(x, input_grad_sink)
        run = self._pass(hooks)
        if not grad_wanted:
            return run_forward(self, source, run)
        self._plan_keep(source, run, anchor, input_grad_sink)
        return StreamFunction.apply(self, source, input_grad_sink, run, anchor, *params)

    def pooled(self, x: torch.Tensor | RegionSource, pool: str, *, input_grad_sink: InputGradientSink | None = None,
               hooks: StreamHooks | None = None, mask=None) -> torch.Tensor:
        """``trunk(x)`` globally max- or mean-pooled (``pool`` "max" or "avg"): (N, C), with
        autograd, equal to pooling :meth:`forward`'s map, but the map is reduced block by block
        and never held, nor its gradient (see :mod:`engine.streaming.pooled`). With ``mask``
        (output plane, bool (H, W) or (N or 1, 1, H, W)) only its cells are pooled; blocks outside
        it are still computed unless ``hooks.skip_block`` leaves them out (:func:`~engine.streaming.pooled.mask_skip`)."""
        source, anchor, params, grad_wanted = self._prepare(x, input_grad_sink)
        run = self._pass(hooks)
        reducer = GlobalPoolReducer(pool, mask)
        if not grad_wanted:
            run_forward(self, source, run, keep_output=False, reducer=reducer)
            return reducer.pooled().to(reducer.dtype)
        self._plan_keep(source, run, anchor, input_grad_sink)
        return PooledStreamFunction.apply(self, source, input_grad_sink, run, reducer, anchor, *params)

    def forward_blocks(self, x: torch.Tensor | RegionSource, *, hooks: StreamHooks | None = None) -> None:
        """Run the forward pass for ``hooks.on_block`` only, without autograd and keeping no
        output map: each block's owned cells go to ``on_block`` and are then dropped."""
        run_forward(self, self._source(x), self._pass(hooks), keep_output=False)

    def backward_from(self, x: torch.Tensor | RegionSource, grad_for_block: BlockGradFn, *,
                      input_grad_sink: InputGradientSink | None = None, params: bool = False,
                      hooks: StreamHooks | None = None):
        """The streamed backward pass with the output map's gradient given block by block:
        ``grad_for_block(rows, cols)`` returns the gradient of cells ``[rows) x [cols)`` (output
        plane; shape (N, C, rows, cols)), or None where it is zero. The input gradient goes to
        ``input_grad_sink`` region by region; with ``params``, returns the trunk's parameter
        gradients (a list, None for unused), else None. Nothing of the size of the map is held."""
        source = self._source(x)
        need_params = [params and p.requires_grad for p in self.trunk.parameters()]
        with torch.enable_grad():  # the blocks are recomputed with autograd whatever the caller's mode
            _, grads = run_backward(self, source, self._pass(hooks), grad_for_block, input_grad_sink is not None,
                                    need_params, input_grad_sink)
        return grads if params else None

    def _plan_keep(self, source: RegionSource, run: StreamPass, anchor: torch.Tensor, sink) -> None:
        """Choose the blocks whose forward graph this training call keeps (none without a budget)."""
        limit = self.graph_budget if run.hooks.graph_budget is None else run.hooks.graph_budget
        if limit is None and run.hooks.on_plan is None:
            return
        device = self.compute_device(source)
        element_bytes = None
        if torch.is_autocast_enabled(device.type):
            element_bytes = torch.get_autocast_dtype(device.type).itemsize
        plan = self.graph_plan(source.shape[2:], batch=int(source.shape[0]), element_bytes=element_bytes,
                               graph_budget=limit, skip=run.hooks.skip_block)
        run.keep = frozenset(plan.kept)
        run.tile_plan = plan.tile_plan
        run.keep_x = anchor.requires_grad or sink is not None
        if run.hooks.on_plan is not None:
            run.hooks.on_plan(plan)

    def _pass(self, hooks: StreamHooks | None) -> StreamPass:
        return StreamPass(hooks if hooks is not None else StreamHooks(), self.compute_device())

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

    # ----------------------------------------------------------------------------- blocks
    def read_cone(self, source, rows, cols) -> torch.Tensor:
        """The input window ``[rows) x [cols)`` on the compute device, in the tiles' layout."""
        x = source.read(rows, cols)
        device = self.compute_device(source)
        if x.device != device:
            x = x.to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def recompute(self, source, rp: AxisPlan, cp: AxisPlan, need_x: bool):
        """A block's cone read and run with autograd: (input, output). Backward's recomputation,
        and the forward pass of a block whose graph the plan keeps."""
        x = self.read_cone(source, rp.cone, cp.cone).detach()
        if need_x:
            x.requires_grad_(True)
        return x, run_block(self.graph, x, rp, cp)
