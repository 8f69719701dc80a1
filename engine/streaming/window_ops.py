"""Run windowed layers on a tile, padding only where the tile touches the true border.

Each runner takes the tile's input (already cropped to the clipped window) and, per axis, an
:class:`AxisTile` saying which outputs to produce and how much border padding they need. The
layer itself always runs with ``padding=0`` on the explicitly padded tile, so the result is the
conventional layer's output on exactly those positions.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _own_padding(th: AxisTile, tw: AxisTile, kernel, stride, dilation,
                 most: tuple[int, int] | None) -> tuple[int, int] | None:
    """Symmetric padding the layer can apply itself instead of an asymmetric explicit pad, or None.

    A stride-2 layer at the image border often needs less padding on its far side (its last
    window ends inside the image): ResNet's 7x7/2 stem pads (3, 2), its max-pool (1, 0). An
    explicit ``F.pad`` copies the tile and autograd saves that copy beside the unpadded tensor
    (ResNet-34 to layer2, whole 2048² image: 15% more saved bytes than conventional, which pads
    inside the layer). Padding both sides by the larger amount gives exactly the wanted outputs
    when the extra padding adds no output: then no copy is made. (When it would add outputs,
    keeping a slice of them costs more than the explicit pad, measured: a view slowed the layers
    after it by 35% (ResNet-34) and a copy of the slice SmallNet's step by 15-30%, CPU.) ``most``:
    the layer's largest own padding (max-pool allows half its kernel)."""
    pads = []
    for t, k, s, d, cap in zip((th, tw), kernel, stride, dilation, most or (None, None), strict=True):
        n_in = t.crop.end - t.crop.start
        p = max(t.crop.pad_lo, t.crop.pad_hi)
        if p != t.crop.pad_lo or (cap is not None and p > cap):
            return None
        if (n_in + 2 * p - d * (k - 1) - 1) // s + 1 != t.out_end - t.out_start:
            return None
        pads.append(p)
    return pads[0], pads[1]


class WindowRunner:
    """A windowed layer run on a tile: ``runner(x, th, tw)``. :meth:`copies_tile` says whether
    that tile is padded by a copy (``F.pad``), which autograd then saves beside the unpadded
    tensor: the graph budget counts those bytes (:mod:`engine.streaming.keep`)."""

    def __init__(self, layer_padding, run):
        self._layer_padding = layer_padding  # (th, tw) -> the layer's own padding, or None: a copy
        self._run = run

    def __call__(self, x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        return self._run(x, th, tw, self._layer_padding(th, tw))

    def copies_tile(self, th: AxisTile, tw: AxisTile) -> bool:
        return self._layer_padding(th, tw) is None


def conv_runner(conv: nn.Conv2d) -> WindowRunner:
    def layer_padding(th: AxisTile, tw: AxisTile) -> tuple[int, int] | None:
        pads = _pads(th, tw)
        if not any(pads):
            return 0, 0
        sym = _symmetric(pads)
        if sym is not None:
            return sym  # let the convolution pad: no copy of the tile
        return _own_padding(th, tw, conv.kernel_size, conv.stride, conv.dilation, None)

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile, padding) -> torch.Tensor:
        if padding is None:
            x, padding = F.pad(x, _pads(th, tw)), (0, 0)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)

    return WindowRunner(layer_padding, run)


def maxpool_runner(pool: nn.MaxPool2d, axes: tuple[AxisWindow, AxisWindow]) -> WindowRunner:
    kernel = (axes[0].kernel, axes[1].kernel)
    stride = (axes[0].stride, axes[1].stride)
    dilation = (axes[0].dilation, axes[1].dilation)

    def layer_padding(th: AxisTile, tw: AxisTile) -> tuple[int, int] | None:
        pads = _pads(th, tw)
        if not any(pads):
            return 0, 0
        sym = _symmetric(pads)
        if sym is not None and 2 * sym[0] <= kernel[0] and 2 * sym[1] <= kernel[1]:
            return sym  # max-pool's own padding is -inf, as the explicit pad below
        return _own_padding(th, tw, kernel, stride, dilation, (kernel[0] // 2, kernel[1] // 2))

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile, padding) -> torch.Tensor:
        if padding is None:
            # -inf never wins a max; every window holds at least one real element.
            x, padding = F.pad(x, _pads(th, tw), value=float("-inf")), (0, 0)
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=False)

    return WindowRunner(layer_padding, run)


def _window_counts(axis: AxisWindow, t: AxisTile, include_pad: bool, device) -> torch.Tensor:
    """Divisor per output along one axis, as PyTorch's average pooling counts it."""
    o = torch.arange(t.out_start, t.out_end, device=device)
    start = o * axis.stride - axis.pad_lo
    end = start + axis.kernel
    if include_pad:
        # Padding counts, a ceil-mode overhang past the padding does not.
        return (torch.clamp(end, max=t.in_len + axis.pad_hi) - start)
    return torch.clamp(end, max=t.in_len) - torch.clamp(start, min=0)


def avgpool_runner(pool: nn.AvgPool2d, axes: tuple[AxisWindow, AxisWindow]) -> WindowRunner:
    kernel = (axes[0].kernel, axes[1].kernel)
    stride = (axes[0].stride, axes[1].stride)

    def layer_padding(th: AxisTile, tw: AxisTile) -> tuple[int, int] | None:
        # Interior tile: every window is whole. At a border the tile is padded by a copy and the
        # divisor counted per window.
        return None if any(_pads(th, tw)) else (0, 0)

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile, padding) -> torch.Tensor:
        if padding is not None:
            # PyTorch divides by kernel area (or override).
            return F.avg_pool2d(x, kernel, stride, 0, False, True, pool.divisor_override)
        x = F.pad(x, _pads(th, tw))
        if pool.divisor_override:
            return F.avg_pool2d(x, kernel, stride, 0, False, True, pool.divisor_override)
        total = F.avg_pool2d(x, kernel, stride, 0, False, True, 1)
        rows = _window_counts(axes[0], th, pool.count_include_pad, x.device)
        cols = _window_counts(axes[1], tw, pool.count_include_pad, x.device)
        divisor = (rows[:, None] * cols[None, :]).to(total.dtype)
        return total / divisor

    return WindowRunner(layer_padding, run)
