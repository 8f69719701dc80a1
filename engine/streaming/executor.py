"""Execute the streamable graph on one block's input cone; a block's share of the output gradient."""

from __future__ import annotations

from typing import Callable

import torch

from engine.streaming.graph import StreamGraph
from engine.streaming.plan import AxisPlan, Block

#: The output map's gradient for cells [rows) x [cols) of the output plane, or None where it is 0;
#: with a true ``needs_values`` attribute it is also given the block's recomputed ``values=``.
BlockGradFn = Callable[..., "torch.Tensor | None"]


def crop(t: torch.Tensor, have_h, have_w, want_h, want_w) -> torch.Tensor:
    """Slice the part ``want`` out of a tensor that holds region ``have`` (same plane)."""
    r0, c0 = want_h[0] - have_h[0], want_w[0] - have_w[0]
    if r0 == 0 and c0 == 0 and want_h[1] == have_h[1] and want_w[1] == have_w[1]:
        return t
    return t[..., r0:r0 + want_h[1] - want_h[0], c0:c0 + want_w[1] - want_w[0]]


def run_block(graph: StreamGraph, x_cone: torch.Tensor, plan_h: AxisPlan, plan_w: AxisPlan) -> torch.Tensor:
    """Run every needed node on its planned region, starting from the input cone.

    ``x_cone`` must hold exactly ``plan_h.cone`` x ``plan_w.cone`` of the input. Returns the
    output node's values on the block. Activations are dropped as soon as their last consumer
    ran, so without autograd the peak is a few layers of one cone.
    """
    nodes = graph.nodes
    values: dict[int, torch.Tensor] = {0: x_cone}
    remaining = [sum(1 for c in node.consumers if plan_h.regions[c] is not None) for node in nodes]
    for i in range(1, len(nodes)):
        node = nodes[i]
        want_h, want_w = plan_h.regions[i], plan_w.regions[i]
        if want_h is None or want_w is None:
            continue
        if node.kind == "window":
            src = node.inputs[0]
            th, tw = plan_h.tiles[i], plan_w.tiles[i]
            x = crop(values[src], plan_h.regions[src], plan_w.regions[src],
                      (th.crop.start, th.crop.end), (tw.crop.start, tw.crop.end))
            out = node.run(x, th, tw)
        else:
            args = {src: crop(values[src], plan_h.regions[src], plan_w.regions[src], want_h, want_w)
                    for src in node.inputs}
            out = node.run(args)
        values[i] = out
        for src in set(node.inputs):
            remaining[src] -= 1
            if remaining[src] <= 0:
                del values[src]
    return values[len(nodes) - 1]


def block_activations(graph: StreamGraph, x_cone: torch.Tensor, plan_h: AxisPlan, plan_w: AxisPlan) -> list[torch.Tensor]:
    """Every needed node's output on the block, none dropped: to measure activation sizes."""
    values = {0: x_cone}
    for i in range(1, len(graph.nodes)):
        node = graph.nodes[i]
        if plan_h.regions[i] is None:
            continue
        if node.kind == "window":
            src = node.inputs[0]
            th, tw = plan_h.tiles[i], plan_w.tiles[i]
            values[i] = node.run(crop(values[src], plan_h.regions[src], plan_w.regions[src],
                                      (th.crop.start, th.crop.end), (tw.crop.start, tw.crop.end)), th, tw)
        else:
            values[i] = node.run({src: crop(values[src], plan_h.regions[src], plan_w.regions[src],
                                            plan_h.regions[i], plan_w.regions[i]) for src in node.inputs})
    return list(values.values())


def block_grad(grad_out: torch.Tensor | BlockGradFn, rb: Block, cb: Block,
                values: torch.Tensor | None = None) -> torch.Tensor | None:
    """This block's share of the output gradient: its owned cells, zero where an earlier block
    owns them. None when that share is all zero (e.g. a max-pool head's gradient reaches a few
    cells only), which contributes nothing and is skipped. ``values``: the block's recomputed
    output, for a callable that ``needs_values``."""
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
