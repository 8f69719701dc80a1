"""Run windowed layers on a tile, padding only where the tile touches the true border.

Each runner takes the tile's input (already cropped to the clipped window) and, per axis, an
:class:`AxisTile` saying which outputs to produce and how much border padding they need. The
layer itself always runs with ``padding=0`` on the explicitly padded tile, so the result is the
conventional layer's output on exactly those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.streaming.geometry import AxisCrop, AxisWindow


@dataclass(frozen=True)
class AxisTile:
    """One axis of a windowed layer's work on a tile.

    Outputs ``[out_start, out_end)`` (output plane) read ``crop`` (input plane, clipped) of an
    input that is ``in_len`` long in total.
    """

    out_start: int
    out_end: int
    crop: AxisCrop
    in_len: int


def _pads(th: AxisTile, tw: AxisTile) -> tuple[int, int, int, int]:
    """Padding in F.pad order (left, right, top, bottom)."""
    return tw.crop.pad_lo, tw.crop.pad_hi, th.crop.pad_lo, th.crop.pad_hi


def _symmetric(pads: tuple[int, int, int, int]) -> tuple[int, int] | None:
    left, right, top, bottom = pads
    if left == right and top == bottom and left >= 0 and top >= 0:
        return top, left
    return None


def conv_runner(conv: nn.Conv2d) -> Callable[[torch.Tensor, AxisTile, AxisTile], torch.Tensor]:
    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        padding: tuple[int, int] = (0, 0)
        if any(pads):
            sym = _symmetric(pads)
            if sym is not None:
                padding = sym  # let the convolution pad: no copy of the tile
            else:
                x = F.pad(x, pads)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)

    return run


def maxpool_runner(pool: nn.MaxPool2d, axes: tuple[AxisWindow, AxisWindow]):
    kernel = (axes[0].kernel, axes[1].kernel)
    stride = (axes[0].stride, axes[1].stride)
    dilation = (axes[0].dilation, axes[1].dilation)

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        padding: tuple[int, int] = (0, 0)
        if any(pads):
            sym = _symmetric(pads)
            if sym is not None and 2 * sym[0] <= kernel[0] and 2 * sym[1] <= kernel[1]:
                padding = sym  # max-pool's own padding is -inf, as the explicit pad below
            else:
                # -inf never wins a max; every window holds at least one real element.
                x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=False)

    return run


def _window_counts(axis: AxisWindow, t: AxisTile, include_pad: bool, device) -> torch.Tensor:
    """Divisor per output along one axis, as PyTorch's average pooling counts it."""
    o = torch.arange(t.out_start, t.out_end, device=device)
    start = o * axis.stride - axis.pad_lo
    end = start + axis.kernel
    if include_pad:
        # Padding counts, a ceil-mode overhang past the padding does not.
        return (torch.clamp(end, max=t.in_len + axis.pad_hi) - start)
    return torch.clamp(end, max=t.in_len) - torch.clamp(start, min=0)


def avgpool_runner(pool: nn.AvgPool2d, axes: tuple[AxisWindow, AxisWindow]):
    kernel = (axes[0].kernel, axes[1].kernel)
    stride = (axes[0].stride, axes[1].stride)

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        if not any(pads):
            # Interior tile: every window is whole, PyTorch divides by kernel area (or override).
            return F.avg_pool2d(x, kernel, stride, 0, False, True, pool.divisor_override)
        x = F.pad(x, pads)
        if pool.divisor_override:
            return F.avg_pool2d(x, kernel, stride, 0, False, True, pool.divisor_override)
        total = F.avg_pool2d(x, kernel, stride, 0, False, True, 1)
        rows = _window_counts(axes[0], th, pool.count_include_pad, x.device)
        cols = _window_counts(axes[1], tw, pool.count_include_pad, x.device)
        divisor = (rows[:, None] * cols[None, :]).to(total.dtype)
        return total / divisor

    return run
