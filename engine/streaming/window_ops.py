"""Run windowed layers on a tile, padding only where the tile touches the true border.

Each runner takes the tile's input (already cropped to the clipped window) and, per axis, an
:class:`AxisTile` saying which outputs to produce and how much border padding they need. The
layer pads itself where it can (symmetric padding, keeping a slice of its outputs: no copy of
the tile) and otherwise runs with ``padding=0`` on an explicitly padded tile; either way the
result is the conventional layer's output on exactly those positions.
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


def _padded_window(x: torch.Tensor, th: AxisTile, tw: AxisTile, kernel, stride, dilation,
                   most: tuple[int, int] | None, ceil_mode: bool = False):
    """Symmetric padding the layer applies itself, and the outputs to keep of what it then gives,
    instead of an explicit ``F.pad``; or None.

    A tile touching the image on one side only needs padding on that side (a stride-2 layer may
    also need less on the far side of the image: ResNet's 7x7/2 stem pads (3, 2)). An explicit
    ``F.pad`` copies the tile, and autograd saves that copy beside the unpadded tensor: a border
    tile of ResNet-34 to layer2 saved 25-30% more than an interior one, which the graph budget's
    per-cell estimate does not see. Padding both sides by ``p`` (the larger pad, raised so the
    windows stay on the stride's grid) gives every wanted output, shifted by ``(p - pad_lo) /
    stride`` and perhaps with extra ones at the far end: a slice of the result (a view, no copy)
    is exactly the explicit pad's output. ``most``: the largest padding the layer takes (max-pool:
    half its kernel); ``ceil_mode``: max-pool's other way to reach a far-side pad (windows that
    run past the input see only what is in it, as a -inf pad). Returns ((pad_h, pad_w),
    ceil_mode, (start_h, start_w)) or None."""
    plans = []
    for t, n_in, k, s, d, cap in zip((th, tw), x.shape[-2:], kernel, stride, dilation, most or (None, None), strict=True):
        lo, hi, n_out = t.crop.pad_lo, t.crop.pad_hi, t.out_end - t.out_start
        p = lo + -(-(max(lo, hi) - lo) // s) * s
        if lo < 0 or hi < 0:  # a window wholly in the padding is trimmed: the explicit path does that
            return None
        if cap is None or p <= cap:
            plans.append((p, (p - lo) // s, (n_in + 2 * p - d * (k - 1) - 1) // s + 1 >= (p - lo) // s + n_out, False))
            continue
        plans.append((lo, 0, lo <= cap and ceil_mode and _ceil_outputs(n_in, lo, k, s, d) >= n_out, True))
    if not all(ok for _, _, ok, _ in plans):
        return None
    # Ceil mode applies to both axes; on an axis that does not need it, it can only add outputs
    # at the far end, which the slice leaves out.
    return (plans[0][0], plans[1][0]), any(c for *_, c in plans), (plans[0][1], plans[1][1])


def _ceil_outputs(n_in: int, pad: int, k: int, s: int, d: int) -> int:
    """Outputs of a ceil-mode max-pool over ``n_in`` with ``pad`` each side (PyTorch's rule: the
    last window must start inside the input or its near padding)."""
    out = -(-(n_in + 2 * pad - d * (k - 1) - 1) // s) + 1
    if (out - 1) * s >= n_in + pad:
        out -= 1
    return out


def _keep_outputs(y: torch.Tensor, start: tuple[int, int], th: AxisTile, tw: AxisTile) -> torch.Tensor:
    n_h, n_w = th.out_end - th.out_start, tw.out_end - tw.out_start
    if start == (0, 0) and y.shape[-2:] == (n_h, n_w):
        return y
    kept = y[:, :, start[0]:start[0] + n_h, start[1]:start[1] + n_w]
    # A copy, not the view: the layers after it ran 35% slower on strided views (oneDNN, CPU).
    # The copy is the next layer's input, saved once; the uncut output is freed.
    layout = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return kept.contiguous(memory_format=layout)


def conv_runner(conv: nn.Conv2d) -> Callable[[torch.Tensor, AxisTile, AxisTile], torch.Tensor]:
    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        if any(pads):
            own = _padded_window(x, th, tw, conv.kernel_size, conv.stride, conv.dilation, None)
            if own is not None:  # always, for a convolution (no cap on its padding)
                y = F.conv2d(x, conv.weight, conv.bias, conv.stride, own[0], conv.dilation, conv.groups)
                return _keep_outputs(y, own[2], th, tw)
            x = F.pad(x, pads)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return run


def maxpool_runner(pool: nn.MaxPool2d, axes: tuple[AxisWindow, AxisWindow]):
    kernel = (axes[0].kernel, axes[1].kernel)
    stride = (axes[0].stride, axes[1].stride)
    dilation = (axes[0].dilation, axes[1].dilation)
    most = (kernel[0] // 2, kernel[1] // 2)  # PyTorch takes a max-pool padding of at most half the kernel

    def run(x: torch.Tensor, th: AxisTile, tw: AxisTile) -> torch.Tensor:
        pads = _pads(th, tw)
        if any(pads):
            own = _padded_window(x, th, tw, kernel, stride, dilation, most, ceil_mode=True)
            if own is not None:  # max-pool's own padding is -inf, as the explicit pad below
                y = F.max_pool2d(x, kernel, stride, own[0], dilation, ceil_mode=own[1])
                return _keep_outputs(y, own[2], th, tw)
            # -inf never wins a max; every window holds at least one real element.
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, kernel, stride, 0, dilation, ceil_mode=False)

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
