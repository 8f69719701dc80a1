"""Which blocks keep their autograd graph from the forward pass (a graph budget), and the plan's figures.

Streaming's backward recomputes every block's cone with autograd: about a third more compute
than conventional back-propagation. A block whose graph is built in the forward pass and kept
needs no recomputation; it costs the cone's saved tensors from the forward until its backward.
With a budget of bytes for kept graphs, as many blocks are kept as fit and only the rest are
recomputed. Which blocks: the backward pass runs in raster order (the input-gradient sink
relies on it), so the blocks kept are the *first* ones in that order: each is freed before
any recomputation starts, and the peak is the larger of (all kept graphs + one block's
backward work) and (one recomputed block), never their sum. When the whole image's graph fits,
the pass runs as one block (no overlap recomputed either): conventional back-propagation.

Bytes are estimates: saved-tensor elements per input pixel, measured once on a probe cone
(:func:`saved_elements_per_pixel`), times each block's cone area, batch and element size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from engine.streaming.executor import run_block
from engine.streaming.graph import StreamGraph
from engine.streaming.plan import AxisGeometry, TilePlan, plan_axis, plan_tiles


@dataclass(frozen=True)
class GraphPlan:
    """A training pass's schedule under a graph budget.

    ``kept``: (row block, col block) of the blocks whose forward graph is kept, in backward
    order; ``budget`` the bytes given (None: no budget, nothing kept); ``kept_bytes`` their
    estimated saved tensors; ``block_bytes`` the largest block's; ``work_bytes`` one block's
    backward working memory (one gradient the size of its largest saved tensor: backward frees
    the saved tensors as it goes, so little more is live at once); ``map_bytes`` the stitched output map and
    its gradient; ``peak_bytes`` the estimated peak besides the map and the input;
    ``tile_plan`` the blocks the pass runs (one block over the whole image when it all fits).
    """

    tile: tuple[int, int]
    blocks: int
    kept: tuple[tuple[int, int], ...]
    budget: int | None
    kept_bytes: int
    block_bytes: int
    work_bytes: int
    map_bytes: int
    peak_bytes: int
    tile_plan: TilePlan | None = field(default=None, compare=False, repr=False)

    @property
    def recomputed(self) -> int:
        return self.blocks - len(self.kept)

    def summary(self) -> dict:
        """The plan as JSON values (what a UI or a log shows)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tile_plan"}
        d["whole_image"] = self.blocks == 1 and self.tile_plan is not None and self.tile_plan.in_hw == self.tile
        d["kept"] = len(self.kept)
        d["recomputed"] = self.recomputed
        d["estimated_peak_bytes"] = self.peak_bytes + self.map_bytes
        return d


def saved_elements_per_pixel(graph: StreamGraph, trunk: nn.Module, geometry: tuple[AxisGeometry, AxisGeometry],
                             in_channels: int) -> tuple[float, float, int]:
    """Elements autograd saves for backward per input pixel of a cone, per image: all of them
    and the largest single tensor; and the trunk's output channels.

    Measured on a probe cone with ``saved_tensors_hooks`` (each storage counted once; the
    parameters, which exist anyway, not at all): closer than counting layer outputs, since a
    layer may save its input, its output, both, or an index mask.
    """
    probe = tuple(g.cone_len(4) for g in geometry)
    p = next(iter(trunk.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(1, in_channels, *probe, dtype=dtype, device=device, requires_grad=True)
    sizes = graph.spatial_sizes(probe)
    rp = plan_axis(graph, [s[0] for s in sizes], 0, (0, sizes[-1][0]))
    cp = plan_axis(graph, [s[1] for s in sizes], 1, (0, sizes[-1][1]))
    skip = {q.untyped_storage().data_ptr() for q in trunk.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes() // max(t.element_size(), 1))
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        channels = int(run_block(graph, x, rp, cp).shape[1])
    area = probe[0] * probe[1]
    return sum(seen.values()) / area, max(seen.values(), default=0) / area, channels


def plan_graphs(graph: StreamGraph, plan: TilePlan, tile: tuple[int, int], *, saved_per_px: float,
                work_per_px: float, batch: int, element_bytes: int, out_channels: int,
                budget: int | None, skip=None) -> GraphPlan:
    """The blocks to keep within ``budget`` bytes (None: none), first in backward (raster) order.

    Cost of keeping the first k blocks: their saved tensors plus one block's backward work;
    of recomputing the rest: one block's saved tensors plus its work. Blocks are kept while
    the larger of the two stays within the budget. When the whole image fits, one block,
    unless ``skip`` (a pass's ``skip_block``) leaves blocks out: those are worth more than the
    overlap one block saves, and are neither kept nor counted.
    """
    scale = batch * element_bytes
    skips_any = skip is not None and any(skip((plan.rows[i].own_start, plan.rows[i].end),
                                              (plan.cols[j].own_start, plan.cols[j].end))
                                         for i, j in plan.block_order())
    if not skips_any:
        skip = None
    if budget is not None and plan.n_blocks > 1 and skip is None:
        whole = plan_tiles(graph, plan.out_hw, plan.in_hw)
        saved, work = _block_costs(whole, saved_per_px, work_per_px, scale)
        if whole.n_blocks == 1 and saved[0] + work <= budget:
            plan, tile = whole, plan.in_hw
    order = plan.block_order()
    saved, work = _block_costs(plan, saved_per_px, work_per_px, scale)
    block_bytes = max(saved)
    recompute_peak = block_bytes + work
    kept: list[tuple[int, int]] = []
    kept_bytes = 0
    if skip is not None:
        computed = [(i, j) for i, j in order
                    if not skip((plan.rows[i].own_start, plan.rows[i].end), (plan.cols[j].own_start, plan.cols[j].end))]
        wanted = set(computed)
        saved = [b for ij, b in zip(order, saved, strict=True) if ij in wanted]
        order = computed
    if budget is not None:
        for ij, b in zip(order, saved, strict=True):
            rest = recompute_peak if len(kept) + 1 < len(order) else 0
            if max(kept_bytes + b + work, rest) > budget:
                break
            kept.append(ij)
            kept_bytes += b
    peak = max(kept_bytes + work, recompute_peak if len(kept) < len(order) else 0)
    map_bytes = 2 * batch * out_channels * plan.out_hw[0] * plan.out_hw[1] * element_bytes
    return GraphPlan(tile=tuple(tile), blocks=len(order), kept=tuple(kept), budget=budget, kept_bytes=kept_bytes,
                     block_bytes=block_bytes, work_bytes=work, map_bytes=map_bytes, peak_bytes=peak, tile_plan=plan)


def _block_costs(plan: TilePlan, saved_per_px: float, work_per_px: float, scale: int) -> tuple[list[int], int]:
    """Each block's saved-tensor bytes (backward order) and the largest block's backward work."""
    areas = [(plan.row_plans[i].cone[1] - plan.row_plans[i].cone[0])
             * (plan.col_plans[j].cone[1] - plan.col_plans[j].cone[0]) for i, j in plan.block_order()]
    return [int(saved_per_px * a * scale) for a in areas], int(work_per_px * max(areas) * scale)


def free_device_bytes(device: torch.device) -> int:
    """Memory free for this process now: CUDA's free memory, else the OS's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise RuntimeError("cannot tell the free memory here (no /proc/meminfo): give graph_budget in bytes")


def resolve_graph_budget(value: int | str | None, device: torch.device, share: float) -> int | None:
    """A spec's graph budget in bytes: "auto" is ``share`` of the free memory of ``device``."""
    if value == "auto":
        return int(share * free_device_bytes(device))
    return None if value is None else int(value)
