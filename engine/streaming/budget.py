"""Tile sizes from a memory budget: activation bytes per input pixel, measured on a probe cone."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.errors import TileSizeError
from engine.streaming.executor import block_activations
from engine.streaming.graph import StreamGraph
from engine.streaming.plan import AxisGeometry, plan_axis


def activation_elements_per_pixel(graph: StreamGraph, trunk: nn.Module, geometry: tuple[AxisGeometry, AxisGeometry]) -> float:
    """Sum over the trunk's layers of activation elements per input pixel, per image.

    Measured once on a small probe cone (a few output cells): every layer's output there,
    divided by the probe's input area.
    """
    probe = tuple(g.cone_len(4) for g in geometry)
    p = next(iter(trunk.parameters()), None)
    x = torch.zeros(1, _input_channels(trunk), *probe, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    sizes = graph.spatial_sizes(probe)
    rp = plan_axis(graph, [s[0] for s in sizes], 0, (0, sizes[-1][0]))
    cp = plan_axis(graph, [s[1] for s in sizes], 1, (0, sizes[-1][1]))
    with torch.no_grad():
        total = sum(float(t.numel()) for t in block_activations(graph, x, rp, cp))
    return total / (probe[0] * probe[1])


def _input_channels(trunk: nn.Module) -> int:
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def tile_bytes(elements_per_px: float, tile: int, *, batch: int = 1, element_bytes: int = 4,
               training: bool = True) -> int:
    """Rough bytes one tile of ``tile`` x ``tile`` input pixels needs.

    Training keeps every activation of the cone for backward plus their gradients (about 2x);
    inference holds a few layers at a time (counted as 1x, a safe overestimate).
    """
    factor = 2.0 if training else 1.0
    return int(factor * elements_per_px * tile * tile * batch * element_bytes)


def tile_for_budget(elements_per_px: float, geometry: tuple[AxisGeometry, AxisGeometry], budget: int, **kw) -> int:
    """Largest tile (multiple of the stride, at least the receptive field) within ``budget`` bytes."""
    rf = max(g.receptive_field for g in geometry)
    stride = max(g.stride for g in geometry)
    smallest = tile_bytes(elements_per_px, rf, **kw)
    if smallest > budget:
        raise TileSizeError(
            f"a memory budget of {budget / 2**20:.0f} MiB is too small for even the smallest tile "
            f"({rf} px, about {smallest / 2**20:.0f} MiB). Raise the budget.")
    per_px = tile_bytes(elements_per_px, 1, **kw) or 1
    tile = int(math.sqrt(budget / per_px))
    return max(rf, tile - (tile - rf) % stride)
