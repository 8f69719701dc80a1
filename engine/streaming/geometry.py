"""Interval arithmetic for windowed layers along one spatial axis.

Every plane here is a layer's *global* coordinate plane: index 0 is the first row (or column)
of that layer's full feature map, as conventional (non-streamed) execution would compute it.
A tile is an interval ``[start, end)`` in such a plane.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AxisWindow:
    """A sliding window along one axis: kernel, stride, dilation and zero padding.

    ``pad_lo``/``pad_hi`` are the layer's own padding before the first and after the last
    input element. ``ceil_mode`` follows PyTorch pooling (a last, partial window).
    """

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_lo: int = 0
    pad_hi: int = 0
    ceil_mode: bool = False

    @property
    def extent(self) -> int:
        """Input elements one window spans, dilation included."""
        return self.dilation * (self.kernel - 1) + 1

    def out_len(self, in_len: int) -> int:
        """Output length for an input of ``in_len`` elements (PyTorch's shape rule)."""
        span = in_len + self.pad_lo + self.pad_hi - self.extent
        if self.ceil_mode:
            n = -(-span // self.stride) + 1
            # PyTorch drops a last window that would start inside the right padding only.
            if (n - 1) * self.stride >= in_len + self.pad_lo:
                n -= 1
        else:
            n = span // self.stride + 1
        return max(n, 0)

    def in_span(self, out_start: int, out_end: int) -> tuple[int, int]:
        """Unclipped input interval that outputs ``[out_start, out_end)`` read.

        May reach below 0 or past the input's end: those parts are padding (or, with
        ``ceil_mode``, the overhang of a last partial window).
        """
        start = out_start * self.stride - self.pad_lo
        end = (out_end - 1) * self.stride - self.pad_lo + self.extent
        return start, end


@dataclass(frozen=True)
class AxisCrop:
    """How a windowed layer reads its input for one tile along one axis.

    ``[start, end)`` is the clipped input interval actually read (input plane, never empty);
    ``pad_lo``/``pad_hi`` are how many padding elements to add on each side to obtain the
    window (negative: trim, which happens only for windows lying wholly in the padding, e.g. a
    1x1 convolution with padding, where one real element is read and trimmed away).
    Padding is added only where the window reaches past the true border of the feature map.
    """

    start: int
    end: int
    pad_lo: int
    pad_hi: int


def clip_span(span: tuple[int, int], in_len: int) -> AxisCrop:
    """Clip an unclipped input interval to ``[0, in_len)`` and record the border padding."""
    start, end = span
    lo, hi = max(start, 0), min(end, in_len)
    if hi <= lo:  # the window lies wholly in the padding: read the nearest element, trim it
        lo, hi = (0, 1) if end <= 0 else (in_len - 1, in_len)
    return AxisCrop(lo, hi, lo - start, end - hi)


def union(a: tuple[int, int] | None, b: tuple[int, int]) -> tuple[int, int]:
    """Smallest interval holding both (``a`` may be None for 'nothing yet')."""
    if a is None:
        return b
    return min(a[0], b[0]), max(a[1], b[1])
