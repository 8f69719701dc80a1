"""Plan tiles analytically: which input window (cone) each block of output cells depends on.

Everything is separable by axis, so a plan is computed for rows and for columns independently
and combined per block. Plans are pure interval arithmetic on the trunk's own layer geometry:
nothing is measured by probing.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import TileSizeError
from engine.streaming.geometry import clip_span, union
from engine.streaming.graph import StreamGraph
from engine.streaming.window_ops import AxisTile


@dataclass(frozen=True)
class AxisPlan:
    """One axis of one block: each node's interval (its own plane) and each window's tile.

    ``regions[i]`` is None for a node whose output this block does not need.
    ``regions[0]`` is the block's input cone (input plane, clipped to the image).
    """

    regions: tuple[tuple[int, int] | None, ...]
    tiles: tuple[AxisTile | None, ...]

    @property
    def cone(self) -> tuple[int, int]:
        return self.regions[0]  # type: ignore[return-value]


def plan_axis(graph: StreamGraph, lens: list[int], axis: int, out_span: tuple[int, int]) -> AxisPlan:
    """Back-propagate the output interval ``out_span`` through the graph along ``axis``.

    ``lens[i]`` is node i's global length along this axis. A node read by several consumers
    computes the smallest interval covering all of them.
    """
    n = len(graph.nodes)
    need: list[tuple[int, int] | None] = [None] * n
    tiles: list[AxisTile | None] = [None] * n
    need[-1] = out_span
    for i in range(n - 1, 0, -1):
        node, region = graph.nodes[i], need[i]
        if region is None:
            continue
        if node.kind == "window":
            src = node.inputs[0]
            window = node.axes[axis]
            crop = clip_span(window.in_span(*region), lens[src])
            tiles[i] = AxisTile(region[0], region[1], crop, lens[src])
            need[src] = union(need[src], (crop.start, crop.end))
        else:
            for src in node.inputs:
                need[src] = union(need[src], region)
    return AxisPlan(tuple(need), tuple(tiles))


def unclipped_cone(graph: StreamGraph, axis: int, out_start: int, out_end: int) -> tuple[int, int]:
    """Input interval of outputs ``[out_start, out_end)`` on an unbounded plane (no borders).

    Used for the receptive field and stride, which are properties of the trunk alone.
    """
    n = len(graph.nodes)
    need: list[tuple[int, int] | None] = [None] * n
    need[-1] = (out_start, out_end)
    for i in range(n - 1, 0, -1):
        node, region = graph.nodes[i], need[i]
        if region is None:
            continue
        if node.kind == "window":
            need[node.inputs[0]] = union(need[node.inputs[0]], node.axes[axis].in_span(*region))
        else:
            for src in node.inputs:
                need[src] = union(need[src], region)
    return need[0]  # type: ignore[return-value]


@dataclass(frozen=True)
class AxisGeometry:
    """The trunk's geometry along one axis: receptive field and total stride, in input pixels."""

    receptive_field: int
    stride: int

    def cone_len(self, n_out: int) -> int:
        """Input pixels an interior block of ``n_out`` output cells reads."""
        return self.receptive_field + (n_out - 1) * self.stride

    def block_for_tile(self, tile: int) -> int:
        """Most output cells whose interior cone fits in ``tile`` input pixels."""
        if tile < self.receptive_field:
            raise TileSizeError(
                f"tile size {tile} px is smaller than the trunk's receptive field "
                f"({self.receptive_field} px): one output cell alone needs a {self.receptive_field}-px "
                f"input window. Use a tile of at least {self.receptive_field} px (a few times more "
                "keeps the recomputed overlap small).")
        return (tile - self.receptive_field) // self.stride + 1


def axis_geometry(graph: StreamGraph, axis: int) -> AxisGeometry:
    # Far from any border so nothing depends on where the plane starts.
    base = 1 << 20
    a0, a1 = unclipped_cone(graph, axis, base, base + 1)
    b0, _ = unclipped_cone(graph, axis, base + 1, base + 2)
    return AxisGeometry(a1 - a0, b0 - a0)


@dataclass(frozen=True)
class Block:
    """A block of output cells along one axis: it computes ``[start, end)`` and owns
    ``[own_start, end)`` (the part no earlier block wrote). Blocks are uniform in size:
    the last one is shifted inward instead of shrunk."""

    start: int
    end: int
    own_start: int


def axis_blocks(out_len: int, max_block: int) -> list[Block]:
    """Cut ``[0, out_len)`` into as few blocks of at most ``max_block`` cells as possible.

    All blocks get the same size (the fewest blocks, evened out), so cones are uniform and
    the last block, shifted inward, recomputes fewer than one cell per block.
    """
    if max_block >= out_len:
        return [Block(0, out_len, 0)]
    count = -(-out_len // max_block)
    block = -(-out_len // count)
    blocks = []
    start = 0
    while start < out_len:
        end = start + block
        if end > out_len:
            blocks.append(Block(out_len - block, out_len, start))
            break
        blocks.append(Block(start, end, start))
        start = end
    return blocks


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

    def block_order(self, priority: tuple[float, float] | None = None) -> list[tuple[int, int]]:
        """(row block, col block) of every block: raster order, or with an output-plane
        ``priority`` (row, col), nearest block centre first."""
        order = [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]
        if priority is not None:
            order.sort(key=lambda ij: self._centre_distance2(ij, priority))
        return order

    def _centre_distance2(self, ij: tuple[int, int], point: tuple[float, float]) -> float:
        rb, cb = self.rows[ij[0]], self.cols[ij[1]]
        return ((rb.start + rb.end) / 2 - point[0]) ** 2 + ((cb.start + cb.end) / 2 - point[1]) ** 2


def plan_tiles(graph: StreamGraph, block_cells: tuple[int, int], in_hw: tuple[int, int]) -> TilePlan:
    """Blocks of at most ``block_cells`` output cells over an input of ``in_hw`` pixels, and their cones."""
    sizes = graph.spatial_sizes(in_hw)
    out_hw = sizes[-1]
    rows = tuple(axis_blocks(out_hw[0], block_cells[0]))
    cols = tuple(axis_blocks(out_hw[1], block_cells[1]))
    row_plans = tuple(plan_axis(graph, [s[0] for s in sizes], 0, (b.start, b.end)) for b in rows)
    col_plans = tuple(plan_axis(graph, [s[1] for s in sizes], 1, (b.start, b.end)) for b in cols)
    return TilePlan(in_hw, out_hw, rows, cols, row_plans, col_plans)
