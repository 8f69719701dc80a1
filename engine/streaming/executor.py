"""Execute the streamable graph on one block's input cone."""

from __future__ import annotations

import torch

from engine.streaming.graph import StreamGraph
from engine.streaming.plan import AxisPlan


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
