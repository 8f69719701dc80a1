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


def _own_padding(x: torch.Tensor, th: AxisTile, tw: AxisTile, kernel, stride, dilation, most: tuple[int, int] | None):
    """Symmetric padding the layer can apply itself instead of an asymmetric explicit pad, and
    the outputs to keep: ((pad rows, pad cols), (rows slice, cols slice)), or None.

    Border tiles often need padding on one side only, or less on one side (a stride-2 layer
    whose last window ends inside the image): an explicit ``F.pad`` then copies the tile, and
    autograd saves that copy beside the unpadded tensor (ResNet-34 to layer2, whole 2048²
    image: 15% more saved bytes than the conventional layer, which pads internally). Padding
    both sides by the larger amount gives the same outputs, shifted by a whole number of
    strides and with extra ones at the end, which a view drops. ``most``: the layer's largest
    own padding (max-pool allows half its kernel)."""
    pads, keep = [], []
    for t, n_in, k, s, d, cap in zip((th, tw), x.shape[-2:], kernel, stride, dilation, most or (None, None), strict=True):
        p = max(t.crop.pad_lo, t.crop.pad_hi)
        extra = p - t.crop.pad_lo
        if extra % s or (cap is not None and p > cap):
            return None
        first = extra // s
        want = t.out_end - t.out_start
        if first + want > (n_in + 2 * p - d * (k - 1) - 1) // s + 1:
            return None
        pads.append(p)
        keep.append(slice(first, first + want))
    return (pads[0], pads[1]), (keep[0], keep[1])


def _keep_outputs(y: torch.Tensor, keep: tuple[slice, slice]) -> torch.Tensor:
    rows, cols = keep
    if rows.start == 0 and cols.start == 0 and rows.stop == y.shape[-2] and cols.stop == y.shape[-1]:
        return y
    return y[..., rows, cols]


def conv_runner(conv: nn.Conv2d) -> Callable[[torch.Tensor, AxisTile, AxisTile], torch.Tensor]:
    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        padding: tuple[int, int] = (0, 0)
        if any(pads):
            sym = _symmetric(pads)
            if sym is not None:
                padding = sym  # let the convolution pad: no copy of the tile
            else:
                own = _own_padding(x, th, tw, conv.kernel_size, conv.stride, conv.dilation, None)
                if own is not None:
                    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, own[0], conv.dilation, conv.groups)
                    return _keep_outputs(y, own[1])
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
            own = _own_padding(x, th, tw, kernel, stride, dilation, (kernel[0] // 2, kernel[1] // 2))
            if sym is not None and 2 * sym[0] <= kernel[0] and 2 * sym[1] <= kernel[1]:
                padding = sym  # max-pool's own padding is -inf, as the explicit pad below
            elif own is not None:
                y = F.max_pool2d(x, kernel, stride, own[0], dilation, ceil_mode=False)
                return _keep_outputs(y, own[1])
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
