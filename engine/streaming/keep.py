"""Which blocks keep their autograd graph from the forward pass (a graph budget), and the plan's figures.

Streaming's backward recomputes every block's cone with autograd: about a third more compute
than conventional back-propagation. A block whose graph is built in the forward pass and kept
needs no recomputation; it costs the cone's saved tensors from the forward until its backward.
With a budget of bytes for kept graphs, as many blocks are kept as fit and only the rest are
recomputed. Which blocks: the backward pass runs in raster order (the input-gradient sink
relies on it), so the blocks kept are the *first* ones in that order (the forward pass runs
them last, so the last forward block is backward's first): each is freed before any
recomputation starts, and the peak is the larger of (all kept graphs + one block's backward
work) and (one recomputed block), never their sum.

The plan also chooses its blocks: the module's tiles, or the whole image as one block
(conventional back-propagation, no overlap recomputed) when that fits, whichever is faster by
estimated compute: every block's forward and backward plus one more forward for each
recomputed block, weighted by its saved bytes (a kept block recomputes nothing). Tilings
coarser than the module's tile are not tried: measured on CPU they ran slower per pixel than
the user's tile although they recompute less overlap (see :func:`plan_graphs`).

Bytes are measured, not modelled per layer: :func:`saved_profile` runs the trunk once on a small
whole image with ``saved_tensors_hooks`` and attributes every saved storage (counted once) to
the layer that saved it, as elements per cell of that layer's output. A block's saved bytes
are then the sum over layers of that figure times the layer's region in the block (exact for
any block shape, the whole image included: within a few per cent of what conventional
back-propagation saves). Backward's working memory is modelled from the same profile: walking
the layers backwards, what is still saved plus the gradient of a layer's output and inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from engine.streaming.executor import run_block
from engine.streaming.graph import StreamGraph
from engine.streaming.plan import AxisGeometry, AxisPlan, TilePlan, plan_axis, plan_tiles
from engine.streaming.window_ops import WindowRunner


@dataclass(frozen=True)
class GraphPlan:
    """A training pass's schedule under a graph budget.

    ``kept``: (row block, col block) of the blocks whose forward graph is kept, in backward
    order; ``budget`` the bytes given (None: no budget, nothing kept); ``kept_bytes`` their
    estimated saved tensors; ``block_bytes`` the largest block's; ``work_bytes`` the largest
    block's backward working memory beyond its saved tensors; ``map_bytes`` the stitched output
    map and its gradient; ``peak_bytes`` the estimated peak besides the map, the input and the
    input's gradient; ``compute`` the estimated compute relative to conventional
    back-propagation (1.0: the whole image kept; 4/3 and more: every block recomputed);
    ``tile_plan`` the blocks the pass runs (the plan's own choice, the whole image as one block
    when it fits).
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
    compute: float = 0.0
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


@dataclass(frozen=True)
class SavedProfile:
    """What each node of the graph makes autograd save, measured (:func:`saved_profile`).

    ``saved[i]``: elements (in the parameters' dtype) saved while node i ran, per cell of its
    output region, per image; ``channels[i]`` its output channels (a gradient of its output
    holds that many elements per cell); ``saves_input[i]``: node i was the first to save its
    input (nothing before it keeps that tensor), so a padded copy would replace it, not add to it.
    """

    saved: tuple[float, ...]
    channels: tuple[int, ...]
    saves_input: tuple[bool, ...]

    @property
    def out_channels(self) -> int:
        return self.channels[-1]


def saved_profile(graph: StreamGraph, trunk: nn.Module, geometry: tuple[AxisGeometry, AxisGeometry],
                  in_channels: int) -> SavedProfile:
    """Run the trunk once, with autograd, on a small whole image (a few output cells, as the
    streamed executor runs it) and attribute every storage autograd saves (each once; the
    parameters, which exist anyway, not at all) to the node that was running: closer than
    counting layer outputs, since a layer may save its input, its output, both, or an index
    mask (bytes are counted, in elements of the parameters' size)."""
    probe = tuple(max(g.cone_len(4), 8 * g.stride) for g in geometry)
    p = next(iter(trunk.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(1, in_channels, *probe, dtype=dtype, device=device, requires_grad=True)
    sizes = graph.spatial_sizes(probe)
    rp = plan_axis(graph, [s[0] for s in sizes], 0, (0, sizes[-1][0]))
    cp = plan_axis(graph, [s[1] for s in sizes], 1, (0, sizes[-1][1]))
    n = len(graph.nodes)
    running = [0]
    saved = [0.0] * n
    shapes: list[tuple[int, ...]] = [tuple(x.shape)] + [(1, 1, 1, 1)] * (n - 1)
    owner = {q.untyped_storage().data_ptr(): -1 for q in trunk.parameters()}
    owner[x.untyped_storage().data_ptr()] = 0
    saved[0] = float(x.numel())
    element = x.element_size()

    input_storage: dict[int, int] = {}

    def tagged(i, fn):
        def run(*a, **kw):
            running[0] = i
            if a and isinstance(a[0], torch.Tensor):  # a windowed layer's input
                input_storage[i] = a[0].untyped_storage().data_ptr()
            out = fn(*a, **kw)
            shapes[i] = tuple(out.shape)
            return out
        return run

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in owner:
            owner[storage.data_ptr()] = running[0]
            saved[running[0]] += storage.nbytes() / element
        return t

    nodes = [dataclasses.replace(nd, run=tagged(i, nd.run)) if nd.run is not None else nd
             for i, nd in enumerate(graph.nodes)]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_block(StreamGraph(nodes, graph.modules), x, rp, cp)
    cells = [max(s[-2] * s[-1], 1) for s in shapes]
    saves_input = tuple(i in input_storage and owner.get(input_storage[i]) == i for i in range(n))
    return SavedProfile(tuple(b / c for b, c in zip(saved, cells, strict=True)), tuple(int(s[1]) for s in shapes),
                        saves_input)


@dataclass(frozen=True)
class _Costs:
    """One tile plan's blocks: saved bytes and backward work per block (backward order)."""

    plan: TilePlan
    order: list[tuple[int, int]]
    saved: list[int]
    work: list[int]
    input_bytes: int


def block_costs(graph: StreamGraph, plan: TilePlan, profile: SavedProfile, scale: int, skip=None) -> _Costs:
    """Each block's saved bytes and backward working memory (``scale``: batch x element bytes);
    blocks ``skip`` (a pass's ``skip_block``) leaves out cost nothing and are not listed.

    The whole image as one block counts neither its input (the caller's tensor, read without a
    copy), nor its input's gradient (it becomes the input's gradient), nor its output's gradient
    (the map's, in ``map_bytes``): every method holds them."""
    whole = plan.n_blocks == 1
    order = [(i, j) for i, j in plan.block_order()
             if skip is None or not skip((plan.rows[i].own_start, plan.rows[i].end), (plan.cols[j].own_start, plan.cols[j].end))]
    saved, work = [], []
    for i, j in order:
        s, w = _one_block(graph, plan.row_plans[i], plan.col_plans[j], profile, whole)
        saved.append(int(s * scale))
        work.append(int(w * scale))
    return _Costs(plan, order, saved, work, int(profile.saved[0] * plan.in_hw[0] * plan.in_hw[1] * scale))


def _one_block(graph: StreamGraph, rp: AxisPlan, cp: AxisPlan, profile: SavedProfile,
               whole: bool) -> tuple[float, float]:
    """(saved elements, working elements beyond them) of one block; walking the nodes
    backwards, working memory is what is still saved plus the gradients of the node's output
    and of its inputs (backward frees a node's saved tensors once it ran). A windowed layer
    that pads a border tile by a copy saves that copy too (the probe, a whole small image, pads
    inside every layer and never shows it)."""
    rows, cols = rp.regions, cp.regions
    cells = [0 if r is None or c is None else (r[1] - r[0]) * (c[1] - c[0]) for r, c in zip(rows, cols, strict=True)]
    per_node = [f * a for f, a in zip(profile.saved, cells, strict=True)]
    for k, node in enumerate(graph.nodes):
        th, tw = rp.tiles[k], cp.tiles[k]
        if cells[k] and th is not None and tw is not None and isinstance(node.run, WindowRunner) \
                and node.run.copies_tile(th, tw):
            read = [t.crop.end - t.crop.start for t in (th, tw)]
            padded = [n + t.crop.pad_lo + t.crop.pad_hi for n, t in zip(read, (th, tw), strict=True)]
            replaced = read[0] * read[1] if profile.saves_input[k] else 0
            per_node[k] += profile.channels[node.inputs[0]] * (padded[0] * padded[1] - replaced)
    if whole:
        per_node[0] = 0.0
    total = sum(per_node)
    grads = [c * a for c, a in zip(profile.channels, cells, strict=True)]
    if whole:  # the map's gradient and the input's are held by every method (map_bytes; the caller's)
        grads[0] = grads[-1] = 0
    live, worst = total, 0.0
    for k in range(len(cells) - 1, 0, -1):
        if not cells[k]:
            continue
        inputs = set(graph.nodes[k].inputs)
        # A join (residual add, concatenation) hands its gradient on as views: nothing new.
        made = sum(grads[s] for s in inputs) if len(inputs) == 1 else 0
        worst = max(worst, live + grads[k] + made - total)
        live -= per_node[k]
    return total, worst


#: Largest image (input pixels) a CPU plan runs as one whole block. Larger, the tiles are the
#: faster: ResNet-34 to layer2 at 4096², the whole image kept took 694-710 CPU s (9.5x
#: conventional's 73 s) against 36 s for 10 of 25 1024-tiles kept; at 2048² the whole image was
#: the faster (0.77x conventional), as was SmallNet's at 4096² against nothing kept
#: (bench/streaming.py --budgets, 2 cores).
CPU_WHOLE_IMAGE_MAX_PIXELS = 2048 * 2048


def plan_graphs(graph: StreamGraph, plan: TilePlan, tile: tuple[int, int], *, profile: SavedProfile, batch: int,
                element_bytes: int, budget: int | None, skip=None, whole_image: bool = True) -> GraphPlan:
    """The schedule within ``budget`` bytes (None: today's, nothing kept): of the module's tile
    plan and the whole image as one block, the one with the least estimated compute whose peak
    fits; in it, the first blocks in backward (raster) order are kept while they fit. A budget
    too small for either: the module's tiles, nothing kept.

    ``skip`` (a pass's ``skip_block``, e.g. blocks without tissue): blocks it leaves out cost
    nothing and are never kept, and the module's tiles stay: skipping whole blocks is worth more
    than the overlap one block would save. ``whole_image`` False: the module's tiles only (see
    :data:`CPU_WHOLE_IMAGE_MAX_PIXELS`)."""
    scale = batch * element_bytes
    map_bytes = 2 * batch * profile.out_channels * plan.out_hw[0] * plan.out_hw[1] * element_bytes
    own_costs = block_costs(graph, plan, profile, scale, skip)
    if skip is not None and len(own_costs.order) == plan.n_blocks:
        skip = None  # nothing is left out: every schedule is open
    if not own_costs.order:  # every block left out: nothing runs, nothing is kept
        return GraphPlan(tile=tuple(tile), blocks=0, kept=(), budget=budget, kept_bytes=0, block_bytes=0,
                         work_bytes=0, map_bytes=map_bytes, peak_bytes=0, compute=0.0, tile_plan=plan)
    own = _schedule(own_costs, 0 if budget is None else budget)
    best = own if budget is not None and own.peak <= budget else None
    if budget is not None and skip is None and whole_image:
        # The whole image as one block, when it fits: no overlap and nothing recomputed. Not coarser
        # tilings: the tile is the user's (the largest window one block reads), and measured on
        # CPU, blocks larger than it ran slower per pixel than it (bench/streaming.py --budgets,
        # ResNet-34 to layer2, 4096², tile 1024: 1 of 6 larger blocks kept 0.90x conventional
        # against 0.64x for every 1024 tile recomputed), although they recompute less overlap.
        s = _schedule(block_costs(graph, plan_tiles(graph, plan.out_hw, plan.in_hw), profile, scale), budget)
        if s.peak <= budget and (best is None or s.compute < best.compute - 1e-9):
            best = s
    chosen = best or _schedule(own.costs, 0)
    c = chosen.costs
    conv = sum(c.saved) if c.plan.n_blocks == 1 else _whole_saved(graph, plan, profile, scale)
    out_tile = tuple(tile) if c.plan is plan else (max(r.cone[1] - r.cone[0] for r in c.plan.row_plans),
                                                  max(r.cone[1] - r.cone[0] for r in c.plan.col_plans))
    return GraphPlan(tile=out_tile, blocks=len(c.order), kept=chosen.kept, budget=budget,
                     kept_bytes=sum(c.saved[:len(chosen.kept)]), block_bytes=max(c.saved), work_bytes=max(c.work),
                     map_bytes=map_bytes, peak_bytes=chosen.peak, compute=chosen.compute / max(3 * conv, 1),
                     tile_plan=c.plan)


@dataclass(frozen=True)
class _Schedule:
    costs: _Costs
    kept: tuple[tuple[int, int], ...]
    peak: int
    compute: float


def _schedule(c: _Costs, budget: int) -> _Schedule:
    """Keep the first blocks in backward order while the peak stays within ``budget``: kept
    graphs are all held when backward starts (its first block's work on top); a recomputed
    block holds its own graph and work only. Compute: forward + backward (3 units per saved
    byte) for every block, one more forward for each recomputed one."""
    n = len(c.order)
    recompute_peak = [0] * (n + 1)  # recompute_peak[k]: the largest block after the first k
    for k in range(n - 1, -1, -1):
        recompute_peak[k] = max(recompute_peak[k + 1], c.saved[k] + c.work[k])
    kept_peak, k = 0, 0
    while k < n:
        # Keeping blocks 0..k: when backward reaches kept block m, blocks m..k are still held
        # and m works: the peak is the largest over m of their saved bytes plus m's work.
        trial = max(kept_peak + c.saved[k], c.saved[k] + c.work[k])
        if max(trial, recompute_peak[k + 1]) > budget:
            break
        kept_peak, k = trial, k + 1
    peak = max(kept_peak, recompute_peak[k])
    compute = 3 * sum(c.saved) + sum(c.saved[k:])
    return _Schedule(c, tuple(c.order[:k]), peak, compute)


def _whole_saved(graph: StreamGraph, plan: TilePlan, profile: SavedProfile, scale: int) -> int:
    whole = plan_tiles(graph, plan.out_hw, plan.in_hw)
    return sum(block_costs(graph, whole, profile, scale).saved)


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
